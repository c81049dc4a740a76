// The FT-Ops page: reads api/dashboard and draws it. No framework and no CDN: DOM elements built with
// textContent (never innerHTML, so no value from a log or a tag can become markup) and charts as inline SVG.
"use strict";
(() => {
  const SVGNS = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 30000;

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    return fill(el, attrs, kids);
  }
  function s(tag, attrs, ...kids) {
    return fill(document.createElementNS(SVGNS, tag), attrs, kids);
  }
  function fill(el, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.setAttribute("class", v);
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  // Airflow pages open in the whole window (this page is framed by the UI); MLflow and Data Docs in a new tab.
  const airflowLink = (href, text, title) => href ? h("a", {href, target: "_top", title}, text) : text;
  const newTab = (href, text) => href ? h("a", {href, target: "_blank", rel: "noopener"}, text) : null;

  const num = (x, d = 3) => x === null || x === undefined ? "–" : Number(x).toFixed(d);
  const pct = (x, d = 1) => x === null || x === undefined ? "–" : `${(100 * x).toFixed(d)} %`;
  const signed = (x, d = 3) => x === null || x === undefined ? "–" : `${x >= 0 ? "+" : ""}${Number(x).toFixed(d)}`;
  const ms = (x) => x === null || x === undefined ? "–" : `${Math.round(x)} ms`;
  // Times in UTC, as Airflow shows them by default: "2026-11-30 07:45 UTC".
  const when = (iso) => iso ? `${new Date(iso).toISOString().slice(0, 16).replace("T", " ")} UTC` : "–";
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const m = Math.round(seconds / 60);
    if (m < 60) return `${m} min`;
    const hours = Math.floor(m / 60);
    return hours < 48 ? `${hours} h ${m % 60} min` : `${Math.round(hours / 24)} days`;
  }

  function accuracyText(v) {
    if (!v || v.accuracy === null || v.accuracy === undefined) return "–";
    let text = `${num(v.accuracy)} vs ${num(v.baseline_accuracy)} baseline`;
    const g = v.accuracy_gain;
    if (g) text += ` (${signed(g.value)}, ${Math.round(100 * g.confidence)} % CI [${signed(g.ci_low)}, ${signed(g.ci_high)}])`;
    return text;
  }

  // The figures of a version with the set each was measured on (ftops.registry.yardstick).
  const ciText = (ci) => ci ? `${ci.confidence ? Math.round(100 * ci.confidence) + " % " : ""}CI [${signed(ci.low)}, ${signed(ci.high)}]` : "";
  function gainText(g) {
    const parts = [g.gain !== null && g.gain !== undefined ? signed(g.gain) : null, ciText(g.gain_ci)].filter(Boolean);
    return parts.length ? parts.join(", ") : "–";
  }
  function gateText(g) {
    if (!g || g.accuracy === null || g.accuracy === undefined) return "–";
    const against = g.against_accuracy === null || g.against_accuracy === undefined ? "" : ` vs ${num(g.against_accuracy)} (${g.against || "champion"})`;
    return `${num(g.accuracy)}${against} on ${g.yardstick}${g.comparable ? "" : " (not comparable across versions)"}; gain ${gainText(g)}`;
  }
  function splitText(sp) {
    if (!sp || sp.accuracy === null || sp.accuracy === undefined) return "–";
    const champ = sp.champion_accuracy === null || sp.champion_accuracy === undefined ? "" : ` vs ${num(sp.champion_accuracy)}`;
    const rows = sp.excluded_incumbent_rows === null || sp.excluded_incumbent_rows === undefined ? "" : ` (${sp.excluded_incumbent_rows} incumbent-written rows excluded)`;
    return `${num(sp.accuracy)}${champ}${rows}`;
  }
  function sliceText(sl) {
    if (!sl) return "–";
    const head = `${sl.pattern} (${sl.size ?? "?"} prompts`;
    if (!sl.has_reference) return `${head}): no reference`;
    const champ = sl.fixed_rate_champion === null || sl.fixed_rate_champion === undefined ? "" : ` vs champion ${pct(sl.fixed_rate_champion, 0)}`;
    return `${head}, references: ${sl.reference}): fixed ${pct(sl.fixed_rate, 0)}${champ}`;
  }
  function judgeText(j) {
    if (!j) return "–";
    const ci = j.net_win_ci ? ` CI [${signed(j.net_win_ci.low)}, ${signed(j.net_win_ci.high)}]` : "";
    const kappa = j.kappa === null || j.kappa === undefined ? "kappa none (uncalibrated)" : `kappa ${num(j.kappa, 2)}`;
    return `${j.model || "?"}: win rate ${pct(j.win_rate, 0)}, net win ${signed(j.net_win)}${ci}, ${kappa}`;
  }

  function kv(pairs) {
    return h("dl", {class: "kv"}, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function modelCard(role, m) {
    if (!m) {
      return h("div", {class: `model ${role}`, "data-role": role},
        h("span", {class: "role"}, role === "champion" ? "Champion" : "Canary"), " ",
        h("span", {class: "muted"}, role === "champion" ? "none yet: the first passing fine-tune becomes it" : "none: all traffic goes to the champion"));
    }
    const canary = role === "canary";
    const promotion = m.hours_to_promotion !== undefined
      ? `earliest in ${duration(3600 * m.hours_to_promotion)} (${when(m.earliest_promotion_at)}), if live metrics hold`
      : null;
    return h("div", {class: `model ${role}`, "data-role": role, "data-version": m.version},
      h("span", {class: "role"}, canary ? "Canary" : "Champion"), " ",
      h("strong", {class: "version"}, `version ${m.version}`), " ",
      newTab(m.links && m.links.mlflow, "MLflow run ↗"),
      kv([
        ["Dataset", m.dataset_version || "–"],
        ...cardFigures(m),
        ["Latency p50", ms(m.latency_p50_ms)],
        ["Cost", m.cost_per_1k_tokens === null || m.cost_per_1k_tokens === undefined ? "–" : `$${num(m.cost_per_1k_tokens, 4)} / 1k tokens`],
        canary && ["Traffic", `${m.traffic_percent ?? "?"} % (ramp step ${m.ramp_step} of ${m.ramp_steps}: ${(m.ramp_percent || []).join(" → ")} %)`],
        canary && ["Promotion", promotion || "–"],
        !canary && m.promoted_at && ["Champion since", when(m.promoted_at)],
      ]));
  }

  function cardFigures(m) {
    const y = m.yardstick;
    if (!y || y.gate.kind === "own_split") return [["Accuracy", `${accuracyText(m)}${m.accuracy === null || m.accuracy === undefined ? "" : " (own test split: not comparable across versions)"}`]];
    return [
      ["Gate", gateText(y.gate)],
      y.split && ["Split w/o incumbent rows", splitText(y.split)],
      y.slice && ["Failure slice", sliceText(y.slice)],
      y.judge && ["Judge", judgeText(y.judge)],
    ];
  }

  function liveTable(t) {
    const roles = ["champion", "canary"].filter((r) => t[r] && t[r].live);
    if (!roles.length) return h("p", {class: "muted"}, "No live calls logged for the versions in service.");
    const row = (label, f) => h("tr", {}, h("th", {}, label), roles.map((r) => h("td", {class: "num"}, f(t[r].live))));
    return h("table", {class: "live"},
      h("tr", {}, h("th", {}, `since ${when(t[roles[0]].live.since)}`), roles.map((r) => h("th", {class: "num"}, `${r} v${t[r].version}`))),
      row("Requests", (l) => l.requests),
      row("Error rate", (l) => pct(l.error_rate)),
      row("Latency p95", (l) => ms(l.latency_p95_ms)),
      row("Task success", (l) => pct(l.task_success_rate)),
      row("Mean rating", (l) => num(l.mean_rating, 2)),
      t.cost ? row("Cost / 1 000 calls", (l) => costText(t.cost, roles.find((r) => t[r].live === l))) : null);
  }

  // Cost per 1 000 calls of a role from its logged calls, with the saving against the first upstream version.
  function costText(cost, role) {
    const value = cost[`${role}_per_1k_calls`], saving = cost[`${role}_saving`];
    if (value === null || value === undefined) return "unpriced";
    return saving === null || saving === undefined ? num(value, 4) : `${num(value, 4)} (saving ${pct(saving)})`;
  }

  const ROLE_COLOR = {champion: "#2563eb", canary: "#d97706", previous: "#93c5fd", archived: "#cbd5e1"};

  // Every version on one yardstick (accuracy_by_version): the latest eval-set version any of them answered; before
  // any eval-set figure, each version's own test split, labelled as not comparable.
  function accuracyChart(cmp) {
    const pending = cmp && cmp.comparable;  // a version not yet re-evaluated keeps its place, as an empty frame
    const shown = ((cmp && cmp.points) || []).filter((p) => p.accuracy !== null && p.accuracy !== undefined || pending);
    if (!shown.length) return h("p", {class: "muted"}, "No evaluated version yet.");
    const W = 400, H = 200, L = 34, B = 24, T = 8, plotH = H - B - T, step = (W - L - 8) / shown.length;
    const y = (a) => T + plotH * (1 - Math.max(0, Math.min(1, a)));
    const svg = s("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Accuracy by model version",
      "data-yardstick": cmp.yardstick, "data-comparable": String(cmp.comparable)});
    for (const g of [0, 0.25, 0.5, 0.75, 1]) {
      svg.append(s("line", {x1: L, x2: W - 4, y1: y(g), y2: y(g), stroke: "#e2e8f0"}),
        s("text", {x: L - 4, y: y(g) + 4, "text-anchor": "end"}, g.toFixed(2)));
    }
    shown.forEach((p, i) => {
      const x = L + i * step, bw = Math.min(36, step * 0.6), cx = x + step / 2;
      const role = (p.role || "").split(",").find((a) => a === "champion" || a === "canary") || p.role || "";
      const color = ROLE_COLOR[role] || (p.role === "archived" || p.role === "archive" ? ROLE_COLOR.archived : "#60a5fa");
      if (p.accuracy === null || p.accuracy === undefined) {
        svg.append(s("g", {class: "pending", "data-version": p.version},
          s("line", {x1: cx, x2: cx, y1: y(0), y2: y(0.12), stroke: "#94a3b8", "stroke-dasharray": "3 3"}),
          s("text", {x: cx, y: y(0.12) - 4, "text-anchor": "middle"}, "?"),
          s("title", {}, `v${p.version}: ${p.note}`)));
      } else {
        svg.append(s("rect", {x: cx - bw / 2, y: y(p.accuracy), width: bw, height: y(0) - y(p.accuracy), fill: color, rx: 2,
          "data-version": p.version, "data-accuracy": p.accuracy},
          s("title", {}, `v${p.version}: accuracy ${num(p.accuracy)} on ${p.yardstick}, ${p.role}`)));
      }
      // the gate's champion figure and the gain's CI, where the gate measured on this same set
      const g = p.gate || {};
      if (p.yardstick && g.yardstick === p.yardstick && g.against_accuracy !== null && g.against_accuracy !== undefined) {
        const base = g.against_accuracy;
        svg.append(s("line", {class: "against", x1: cx - bw / 2 - 3, x2: cx + bw / 2 + 3, y1: y(base), y2: y(base), stroke: "#111827", "stroke-width": 2}));
        const ci = g.gain_ci;
        if (ci && ci.low !== null && ci.high !== null) {
          const lo = y(base + ci.low), hi = y(base + ci.high);
          svg.append(s("line", {x1: cx, x2: cx, y1: lo, y2: hi, stroke: "#111827"}),
            s("line", {x1: cx - 4, x2: cx + 4, y1: lo, y2: lo, stroke: "#111827"}),
            s("line", {x1: cx - 4, x2: cx + 4, y1: hi, y2: hi, stroke: "#111827"}));
        }
      }
      const every = Math.ceil(shown.length / 16);  // at most 16 labels
      if (i % every === 0 || i === shown.length - 1) svg.append(s("text", {x: cx, y: H - 8, "text-anchor": "middle"}, `v${p.version}`));
    });
    const missing = shown.filter((p) => p.accuracy === null || p.accuracy === undefined).length;
    return h("div", {class: "chart"},
      h("div", {class: cmp.comparable ? "yardstick small" : "yardstick small warn"},
        cmp.comparable ? `on ${cmp.yardstick}: every version answered the same questions` : `on ${cmp.title.replace(/^accuracy on /, "")} (no eval-set figure yet)`),
      svg,
      h("div", {class: "legend"}, h("span", {style: "--c:#2563eb"}, "champion"), h("span", {style: "--c:#d97706"}, "canary"),
        h("span", {style: "--c:#60a5fa"}, "other"), h("span", {style: "--c:#cbd5e1"}, "archived"),
        ` — black tick: what its gate compared it with on ${cmp.comparable ? "this set" : "its set"}; whisker: the gain's CI around it`,
        missing ? `; ?: not yet evaluated on v${cmp.evalset_version} (${missing})` : ""));
  }

  function yardstickTable(cmp) {
    if (!cmp || !cmp.points || !cmp.points.length) return null;
    return h("table", {class: "yardstick", "data-yardstick": cmp.yardstick},
      h("tr", {}, ["Version", "Role", `Accuracy on ${cmp.comparable ? cmp.yardstick : "own test split (not comparable)"}`,
        "Yardstick of its gate", "Gate: accuracy vs champion", "Gain CI", "Split w/o incumbent rows", "Failure slice", "Judge"].map((c) => h("th", {}, c))),
      [...cmp.points].reverse().map((p) => h("tr", {"data-version": p.version},
        h("td", {}, `v${p.version}`),
        h("td", {}, p.role || "–"),
        h("td", {class: p.accuracy === null || p.accuracy === undefined ? "muted" : "num"},
          p.accuracy === null || p.accuracy === undefined ? p.note || "–" : num(p.accuracy),
          p.accuracy !== null && p.accuracy !== undefined && p.yardstick !== cmp.yardstick ? h("div", {class: "small muted"}, p.yardstick) : null),
        h("td", {class: "small"}, p.gate.yardstick, p.gate.comparable ? "" : h("div", {class: "muted"}, "not comparable across versions")),
        h("td", {class: "num"}, p.gate.accuracy === null || p.gate.accuracy === undefined ? "–"
          : `${num(p.gate.accuracy)}${p.gate.against_accuracy === null || p.gate.against_accuracy === undefined ? "" : " vs " + num(p.gate.against_accuracy)}`),
        h("td", {class: "small"}, gainText(p.gate)),
        h("td", {class: "small"}, splitText(p.split)),
        h("td", {class: "small"}, sliceText(p.slice)),
        h("td", {class: "small"}, judgeText(p.judge)))));
  }

  function successChart(live) {
    const series = Object.entries((live && live.series) || {});
    if (!series.length || !live.buckets.length) return h("p", {class: "muted"}, "No live calls yet.");
    const W = 400, H = 200, L = 40, B = 24, T = 8, n = live.buckets.length, plotH = H - B - T;
    const x = (i) => L + (W - L - 10) * (n === 1 ? 0.5 : i / (n - 1));
    const values = series.flatMap(([, v]) => v.success_rate).filter((r) => r !== null);
    const lo = Math.max(0, Math.floor((Math.min(...values, 1) - 0.05) * 10) / 10);
    const y = (r) => T + plotH * (1 - (r - lo) / (1 - lo || 1));
    const svg = s("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Live task success over time"});
    for (let g = lo; g <= 1.0001; g += (1 - lo) / 4) {
      svg.append(s("line", {x1: L, x2: W - 6, y1: y(g), y2: y(g), stroke: "#e2e8f0"}),
        s("text", {x: L - 4, y: y(g) + 4, "text-anchor": "end"}, `${Math.round(100 * g)}%`));
    }
    for (const [role, v] of series) {
      const color = ROLE_COLOR[role] || "#64748b";
      const pts = v.success_rate.map((r, i) => r === null ? null : [x(i), y(r), r, v.requests[i], i]).filter(Boolean);
      if (pts.length > 1) svg.append(s("polyline", {points: pts.map((p) => `${p[0]},${p[1]}`).join(" "), fill: "none", stroke: color, "stroke-width": 2}));
      for (const p of pts) {
        svg.append(s("circle", {cx: p[0], cy: p[1], r: 3, fill: color},
          s("title", {}, `${role} v${v.version}, ${when(live.buckets[p[4]])}: ${pct(p[2])} of ${p[3]} calls`)));
      }
    }
    svg.append(s("text", {x: L, y: H - 6}, when(live.buckets[0])),
      s("text", {x: W - 6, y: H - 6, "text-anchor": "end"}, `buckets of ${duration(live.bucket_s)}`));
    return h("div", {class: "chart"}, svg,
      h("div", {class: "legend"}, series.map(([role, v]) => h("span", {style: `--c:${ROLE_COLOR[role] || "#64748b"}`}, `${role} v${v.version}`)),
        " — calls that succeeded and were not rated low"));
  }

  function versionsTable(versions) {
    if (!versions || !versions.length) return null;
    return h("details", {},
      h("summary", {}, `All ${versions.length} registered versions`),
      h("table", {},
        h("tr", {}, ["Version", "Role", "Dataset", "Accuracy on its own test split", "Decision", "Why", ""].map((c) => h("th", {}, c))),
        [...versions].reverse().map((v) => h("tr", {},
          h("td", {}, `v${v.version}`),
          h("td", {}, (v.aliases || []).map((a) => h("span", {class: `tag ${a}`}, a)), v.aliases && v.aliases.length ? "" : v.deployment || ""),
          h("td", {}, v.dataset_version || "–"),
          h("td", {}, accuracyText(v)),
          h("td", {}, v.decision || "–"),
          h("td", {class: "small"}, v.reason || ""),
          h("td", {}, newTab(v.links && v.links.mlflow, "MLflow ↗"))))));
  }

  function countList(counts) {
    const entries = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]);
    if (counts === null || counts === undefined) return "–";
    return entries.length ? entries.map(([k, v]) => h("div", {}, `${k}: ${v}`)) : "0";
  }

  // Examples per target source (served, correction, teacher) over both splits, and the preference pairs.
  function sourceList(d) {
    if (!d.source_counts) return "–";
    const total = {};
    Object.values(d.source_counts).forEach((c) => Object.entries(c).forEach(([k, v]) => { total[k] = (total[k] || 0) + v; }));
    return [countList(total), d.preference_rows ? h("div", {class: "muted"}, `${d.preference_rows} preference pairs`) : null];
  }

  // A validation's own page is named by its suite (validations/<suite>/...); an older version links the index.
  const docsLabel = (path) => path.startsWith("validations/") ? `${path.split("/")[1]} ↗` : "Data Docs ↗";

  function datasetsTable(datasets) {
    if (!datasets || !datasets.length) return h("p", {class: "muted"}, "No dataset version yet: ftops_curate publishes them.");
    return h("table", {class: "datasets"},
      h("tr", {}, ["Version", "Train / test", "Accepted", "Targets (by source)", "Filtered (by rule)", "Quarantined (by reason)", "Validation"].map((c) => h("th", {}, c))),
      datasets.map((d) => h("tr", {"data-dataset": d.tag},
        h("td", {}, h("strong", {}, d.version), h("div", {class: "small muted"}, d.content_hash)),
        h("td", {class: "num"}, `${d.train_rows ?? "–"} / ${d.test_rows ?? "–"}`),
        h("td", {class: "num"}, d.counts ? d.counts.accepted : "–", d.counts ? "" : h("div", {class: "small muted"}, "not recorded")),
        h("td", {class: "small"}, sourceList(d)),
        h("td", {class: "small"}, countList(d.counts && d.counts.filtered)),
        h("td", {class: "small"}, countList(d.counts && d.counts.quarantined)),
        h("td", {class: "small"}, Object.entries(d.validation || {}).map(([name, r]) => h("div", {},
          h("span", {class: r.success ? "ok" : "bad"}, `${name} ${r.success ? "passed" : "FAILED"}`),
          ` (${r.evaluated ?? "?"} checks) `,
          (r.docs || []).map((p) => [" ", newTab(`data-docs/${p.split("/").map(encodeURIComponent).join("/")}`, docsLabel(p))])))))));
  }

  function taskSection(t) {
    return h("section", {class: "task", "data-task-type": t.task_type},
      h("div", {class: "task-head"},
        h("h2", {}, t.task_type), h("span", {class: "muted"}, t.model || "no registered model"),
        h("div", {class: "actions"},
          h("a", {href: t.links.finetune, target: "_top", class: "button primary", "data-action": "finetune",
            title: `ftops_finetune: its Trigger button opens the form (task type: ${t.task_type})`}, "Fine-tune…"),
          h("a", {href: t.links.rollback, target: "_top", class: "button", "data-action": "rollback",
            title: `ftops_rollback: its Trigger button opens the form (task type: ${t.task_type})`}, "Roll back…"))),
      h("div", {class: "grid2"}, modelCard("champion", t.champion), modelCard("canary", t.canary)),
      h("div", {class: "grid3"},
        h("div", {}, h("h3", {}, "Live: champion against canary"), liveTable(t)),
        h("div", {}, h("h3", {}, "Accuracy by model version"), accuracyChart(t.accuracy_by_version)),
        h("div", {}, h("h3", {}, "Live task success over time"), successChart(t.live_series))),
      t.accuracy_by_version && t.accuracy_by_version.points.length ? h("h3", {}, `Versions on one yardstick: ${t.accuracy_by_version.title}`) : null,
      yardstickTable(t.accuracy_by_version),
      versionsTable(t.versions),
      h("h3", {}, "Dataset versions"), datasetsTable(t.datasets));
  }

  function activeSection(runs) {
    if (runs === null || runs === undefined) return h("p", {class: "muted"}, "Airflow could not be read.");
    if (!runs.length) return h("p", {class: "muted"}, "No fine-tune is running.");
    return h("table", {class: "active"},
      h("tr", {}, ["Run", "Task type", "State", "Progress", "ETA", ""].map((c) => h("th", {}, c))),
      runs.map((r) => {
        const p = r.progress || {};
        return h("tr", {},
          h("td", {}, airflowLink(r.links && r.links.airflow, r.dag_run_id)),
          h("td", {}, r.task_type || "–"),
          h("td", {}, r.state, r.phase ? `: ${r.phase}` : ""),
          h("td", {}, h("div", {class: "bar", title: pct(p.fraction)}, h("div", {style: `width:${100 * (p.fraction || 0)}%`})),
            h("div", {class: "small muted"}, p.step !== undefined ? `step ${p.step ?? "?"}${p.max_steps ? "/" + p.max_steps : ""} (${pct(p.fraction, 0)})` : "")),
          h("td", {}, duration(p.eta_s)),
          h("td", {}, newTab(r.links && r.links.mlflow, "MLflow ↗")));
      }));
  }

  function recentSection(recent) {
    if (!recent) return null;
    const rate = recent.success_rate === null ? "" : ` (${pct(recent.success_rate, 0)} success, ${duration(recent.avg_duration_s)} on average)`;
    return h("div", {},
      h("p", {}, `Last ${recent.days} days: ${recent.succeeded} succeeded, ${recent.failed} failed${rate}.`),
      recent.runs.length ? h("table", {},
        h("tr", {}, ["Run", "Task type", "State", "Ended", "Version", "Decision"].map((c) => h("th", {}, c))),
        recent.runs.map((r) => h("tr", {},
          h("td", {}, airflowLink(r.links && r.links.airflow, r.dag_run_id)), h("td", {}, r.task_type || "–"),
          h("td", {class: r.state === "success" ? "ok" : "bad"}, r.state), h("td", {class: "nowrap"}, when(r.ended_at)),
          h("td", {}, r.version ? `v${r.version}` : "–"), h("td", {}, r.decision || "–")))) : null);
  }

  function decisionsSection(decisions) {
    if (decisions === null || decisions === undefined) return h("p", {class: "muted"}, "The warehouse could not be read.");
    if (!decisions.length) return h("p", {class: "muted"}, "No decision yet: ftops_governor records one per task type and run.");
    return h("table", {class: "decisions"},
      h("tr", {}, ["When", "Task type", "Kind", "Decision", "Reason", "Run"].map((c) => h("th", {}, c))),
      decisions.map((d) => h("tr", {"data-decision": d.decision_key},
        h("td", {class: "small nowrap"}, when(d.decided_at)), h("td", {}, d.task_type),
        h("td", {class: "small"}, [d.kind, d.policy].filter(Boolean).join(" · ")),
        h("td", {}, d.train ? h("span", {class: "tag train"}, "train") : "wait"),
        h("td", {class: "reason"}, d.reason || ""),
        h("td", {class: "small"}, d.run_id ? airflowLink(d.links && d.links.airflow, d.run_id) : "–"))));
  }

  function render(d) {
    document.getElementById("generated").textContent = `as of ${when(d.generated_at)}`;
    const problems = document.getElementById("problems");
    const lines = Object.entries(d.problems || {});
    problems.hidden = !lines.length;
    problems.replaceChildren(...lines.map(([k, v]) => h("div", {}, h("strong", {}, `${k}: `), v)));
    const main = document.getElementById("main");
    main.replaceChildren(
      h("h3", {}, "Active fine-tunes"), activeSection(d.active_finetunes),
      ...(d.task_types.length ? d.task_types.map(taskSection)
        : [h("p", {class: "muted"}, "No task type yet: ftops_curate makes the first dataset versions.")]),
      h("h3", {}, "Recent fine-tunes"), recentSection(d.recent),
      h("h3", {}, "Governor decisions"), decisionsSection(d.decisions));
    main.setAttribute("aria-busy", "false");
    document.body.dataset.loaded = "true";
  }

  async function load() {
    let response;
    try {
      response = await fetch("api/dashboard", {credentials: "same-origin", headers: {Accept: "application/json"}});
    } catch (err) {
      document.getElementById("generated").textContent = `could not reach the API server: ${err}`;
      return;
    }
    if (!response.ok) {
      const detail = await response.text();
      document.getElementById("generated").textContent = `HTTP ${response.status}: ${detail.slice(0, 300)}`;
      return;
    }
    render(await response.json());
  }

  // Airflow frames this page in a sandbox without allow-top-navigation or allow-popups, so a link with a target
  // would do nothing. The frame is same-origin, so the link is followed by an anchor of the top document (whose
  // navigations are not sandboxed); the click's user activation reaches the top window too.
  document.addEventListener("click", (event) => {
    const link = event.target.closest && event.target.closest("a[target]");
    if (!link || window.top === window || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    let topDocument;
    try {
      topDocument = window.top.document;
    } catch {
      return;  // another origin frames it: leave the link to the browser
    }
    event.preventDefault();
    const proxy = topDocument.createElement("a");
    proxy.href = link.href;
    proxy.target = link.target === "_top" ? "_self" : "_blank";
    proxy.rel = "noopener";
    topDocument.body.append(proxy);
    proxy.click();
    proxy.remove();
  });
  document.getElementById("refresh").addEventListener("click", load);
  load();
  setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
})();
