"""The FT-Ops page in the Airflow UI (``plugins/ftops_ui.py``), on a real ``airflow api-server`` with login on.

One API server for the module: the simple auth manager with the user ``admin`` (password generated into
``$AIRFLOW_HOME``), the project's plugins folder and DAGs, no scheduler (a triggered run stays queued), and the
FT-Ops state a fine-tune leaves (``tests/status_support.py``: champion v2, canary v3, a governor decision) plus
a dataset version whose curation wrote Data Docs. Then:

* the page, its JSON API, its script and the Data Docs refuse a request without a signed-in user;
* the Data Docs route serves the site folder and nothing outside it;
* a headless Chromium (the system's, driven by Playwright) signs in, opens "FT-Ops" from the navigation, finds
  the champion, its metrics and the decision, follows "Fine-tune…" to ``ftops_finetune``, triggers it from the
  form and sees the run in the grid. Screenshots go to the test's tmp folder; with ``FTOPS_UI_SCREENSHOT=<png>``
  the page's is also copied there (``make ui``'s ``scripts/ui_screenshot.py`` makes the README's).

The browser: ``chromium`` on PATH or ``/usr/bin/chromium``; without one the browser test is skipped, except
when ``CI=true`` or ``FTOPS_REQUIRE_BROWSER=1`` (``scripts/test.sh`` installs it in CI).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest

from tests.status_support import PII, TASK, State, build_state, free_port, state_env

ROOT = Path(__file__).resolve().parents[2]
USER = "admin"
DOC_PAGE = "validations/curated_sentiment/run/batch.html"




def _screenshot_script() -> Any:
    """``scripts/ui_screenshot.py`` (not a package): its browser lookup and page capture are what it tests."""
    spec = importlib.util.spec_from_file_location("ui_screenshot", ROOT / "scripts" / "ui_screenshot.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UI = _screenshot_script()

@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """The API server with login required, started on the state's paths while the state is built."""
    home = tmp_path_factory.mktemp("ui-airflow")
    root = tmp_path_factory.mktemp("ui-state")
    port = free_port()
    env = {**os.environ, **state_env(root), "AIRFLOW_HOME": str(home),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
           "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin", "AIRFLOW__API__PORT": str(port)}  # fmt: skip
    env.pop("FTOPS_AIRFLOW_URL", None)
    airflow = f"{shlex.quote(sys.executable)} -m airflow"
    script = (f"{airflow} db migrate && {airflow} dags reserialize && "
              f"exec {airflow} api-server --host 127.0.0.1 --port {port}")  # fmt: skip
    log_path = home / "api-server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["bash", "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with pytest.MonkeyPatch.context() as mp:
            state = build_state(mp, root)
            _add_curated_dataset(state)
            url = f"http://127.0.0.1:{port}"
            _wait_for(url, proc, log_path)
            passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
            yield {"url": url, "password": passwords[USER], "state": state, "log": log_path}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def _add_curated_dataset(state: State) -> None:
    """A second dataset version as curation leaves one: accounting, and a validation with its Data Docs page."""
    from ftops.pipeline.common import dataset_registry
    from ftops.pipeline.dashboard import data_docs_root

    docs = data_docs_root()
    (docs / DOC_PAGE).parent.mkdir(parents=True)
    (docs / "index.html").write_text("<h1>Data Docs index</h1>")
    (docs / DOC_PAGE).write_text("<h1>curated_sentiment validation</h1>")
    (docs.parent / "secret.txt").write_text("outside the site")
    (docs / "link.txt").symlink_to(docs.parent / "secret.txt")
    rows = [{"messages": [{"role": "user", "content": f"r{i}"}, {"role": "assistant", "content": "ok"}]}
            for i in range(20)]  # fmt: skip
    accounting = {"accepted": 20, "filtered:low_rating": 7, "filtered:too_short": 3, "quarantined:malformed": 2}
    validation = {"curated": {"success": True, "evaluated": 14, "failed": [], "docs_path": str(docs / "index.html"),
                              "pages": [DOC_PAGE]}}  # fmt: skip
    dataset_registry(state.cfg).publish(TASK, rows[:16], rows[16:], {"accounting": accounting,
                                                                      "validation": validation})  # fmt: skip


def _token(server: dict[str, Any]) -> str:
    answer = httpx.post(f"{server['url']}/auth/token", json={"username": USER, "password": server["password"]})
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()["access_token"])


def test_nothing_of_the_plugin_answers_without_a_signed_in_user(server: dict[str, Any]) -> None:
    url = server["url"]
    plugins = httpx.get(f"{url}/api/v2/plugins", headers={"Authorization": f"Bearer {_token(server)}"}).json()
    [ours] = [p for p in plugins["plugins"] if p["name"] == "ftops_ui"]
    assert ours["fastapi_apps"][0]["url_prefix"] == "/ftops" and ours["external_views"][0]["name"] == "FT-Ops"

    for path in ("/ftops/api/dashboard", "/ftops/static/page.js", "/ftops/data-docs/index.html"):
        assert httpx.get(f"{url}{path}").status_code == 401, path
        assert httpx.get(f"{url}{path}", headers={"Authorization": "Bearer forged"}).status_code == 403, path
    page = httpx.get(f"{url}/ftops/")
    assert page.status_code == 303 and page.headers["location"].startswith("/auth/login?next=")
    assert "FT-Ops" not in page.text


def test_the_json_api_shows_the_state_a_fine_tune_left(server: dict[str, Any]) -> None:
    answer = httpx.get(f"{server['url']}/ftops/api/dashboard", timeout=60,
                       headers={"Authorization": f"Bearer {_token(server)}"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["complete"], data["problems"]
    [t] = data["task_types"]
    assert (t["task_type"], t["champion"]["version"], t["canary"]["version"]) == (TASK, "2", "3")
    assert t["champion"]["metrics"]["accuracy"] == {"value": 0.8, "baseline": 0.6}
    assert t["champion"]["links"]["mlflow"].startswith("http://127.0.0.1:5000/#/experiments/")
    assert t["canary"]["traffic_percent"] == "10" and t["canary"]["hours_to_promotion"] > 0
    assert t["links"] == {"finetune": "/dags/ftops_finetune", "rollback": "/dags/ftops_rollback"}
    assert [v["version"] for v in t["versions"]] == ["1", "2", "3", "4"]
    assert {v["version"]: v["aliases"] for v in t["versions"]}["2"] == ["champion"]
    newest = t["datasets"][0]
    assert newest["version"] == "v2" and (newest["train_rows"], newest["test_rows"]) == (16, 4)
    assert newest["counts"]["filtered"] == {"low_rating": 7, "too_short": 3}
    assert newest["counts"]["quarantined"] == {"malformed": 2}
    assert newest["validation"]["curated"]["docs"] == [DOC_PAGE]
    assert sum(t["live_series"]["series"]["champion"]["requests"]) == 20
    [decision] = data["decisions"]
    assert decision["links"]["airflow"] == "/dags/ftops_finetune/runs/governor__sentiment__v1__new_data"
    assert PII not in answer.text


def test_data_docs_are_served_from_their_folder_only(server: dict[str, Any]) -> None:
    auth = {"Authorization": f"Bearer {_token(server)}"}
    url = f"{server['url']}/ftops/data-docs"
    page = httpx.get(f"{url}/{DOC_PAGE}", headers=auth)
    assert page.status_code == 200 and "curated_sentiment validation" in page.text
    assert page.headers["content-security-policy"] == "sandbox"  # no script runs on the Airflow origin
    escapes = ("%2e%2e/secret.txt", "..%2fsecret.txt", "link.txt", "%2fetc%2fpasswd", "validations/../../secret.txt")
    for escape in escapes:
        answer = httpx.get(f"{url}/{escape}", headers=auth)
        assert answer.status_code == 404 and "outside the site" not in answer.text, escape


def test_the_ftops_page_in_a_browser(server: dict[str, Any], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    browser_path = UI.find_browser()
    if browser_path is None:
        if os.environ.get("CI") == "true" or os.environ.get("FTOPS_REQUIRE_BROWSER") == "1":
            pytest.fail("no Chromium found (chromium on PATH or /usr/bin/chromium): `apt-get install -y chromium`")
        pytest.skip("no Chromium on this machine (`apt-get install -y chromium`); required when CI=true")
    url = server["url"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(30_000)
        try:
            _open_the_ftops_page(page, expect, url, server["password"], tmp_path)
            _trigger_a_finetune_from_it(page, expect, url, server, tmp_path)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def _open_the_ftops_page(page: Any, expect: Any, url: str, password: str, tmp_path: Path) -> None:
    page.goto(f"{url}/ftops/")  # straight to the page: the login comes first, then the page
    page.wait_for_url("**/auth/login**")
    frame = UI.open_ftops_page(page, url, USER, password)  # signs in at the UI's start page, clicks "FT-Ops"
    section = frame.locator(f'section[data-task-type="{TASK}"]')
    expect(section.locator('[data-role="champion"] .version')).to_have_text("version 2")
    expect(section.locator('[data-role="champion"]')).to_contain_text("0.800 vs 0.600 baseline")
    expect(section.locator('[data-role="canary"]')).to_contain_text("10 % (ramp step 1 of 3")
    expect(section.locator("svg[aria-label='Accuracy by model version'] rect")).to_have_count(3)
    expect(section.locator('tr[data-dataset="dataset/sentiment/v2"]')).to_contain_text("low_rating: 7")
    expect(frame.locator("table.decisions")).to_contain_text("brings 15 new examples")
    shot = tmp_path / "ftops-page.png"
    UI.capture(page, shot)
    if target := os.environ.get("FTOPS_UI_SCREENSHOT"):
        shutil.copyfile(shot, target)


def _trigger_a_finetune_from_it(page: Any, expect: Any, url: str, server: dict[str, Any], tmp_path: Path) -> None:
    page.frame_locator("iframe").locator(f'section[data-task-type="{TASK}"] a[data-action="finetune"]').click()
    page.wait_for_url("**/dags/ftops_finetune")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Hugging Face backend")
    page.screenshot(path=str(tmp_path / "trigger-form.png"), full_page=True)
    dialog.get_by_role("button", name="Trigger").click()
    auth = {"Authorization": f"Bearer {_token(server)}"}
    deadline = time.monotonic() + 20
    runs: list[dict[str, Any]] = []
    while not runs and time.monotonic() < deadline:
        runs = httpx.get(f"{url}/api/v2/dags/ftops_finetune/dagRuns", headers=auth).json()["dag_runs"]
        time.sleep(0.3)
    [run] = runs
    assert run["run_type"] == "manual" and run["conf"]["task_type"] == TASK
    page.goto(f"{url}/dags/ftops_finetune")  # the grid is the DAG page's default view
    in_grid = page.locator('a[href*="/dags/ftops_finetune/runs/manual__"]')
    expect(in_grid.first).to_be_visible()
    assert quote(run["dag_run_id"], safe="") in {quote(unquote(h.split("/runs/")[1].split("/")[0]), safe="")
                                                  for h in in_grid.evaluate_all("els => els.map(e => e.href)")}
    page.screenshot(path=str(tmp_path / "grid.png"), full_page=True)
