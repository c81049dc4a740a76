// Renders the FT-Ops page's script (include/ftops_airflow/ui/static/page.js) on a dashboard JSON without a
// browser: `node tests/page_render.js page.js data.json` prints the page's <main> as XML (every element closed,
// text escaped), so a unit test can read the chart and the tables that the script draws from the data.
// The document below is the little of the DOM that page.js uses; the browser test (tests/integration/test_ui.py)
// runs the same script in Chromium.
"use strict";
const fs = require("fs");
const vm = require("vm");

class Node {}
class Text extends Node {
  constructor(text) { super(); this.text = String(text); }
}
class Element extends Node {
  constructor(tag) {
    super();
    this.tag = tag;
    this.attrs = new Map();
    this.children = [];
    this.dataset = {};
    this.hidden = false;
    this.listeners = {};
  }
  setAttribute(k, v) { this.attrs.set(k, String(v)); }
  getAttribute(k) { return this.attrs.has(k) ? this.attrs.get(k) : null; }
  append(...kids) { for (const k of kids) this.children.push(k instanceof Node ? k : new Text(k)); }
  replaceChildren(...kids) { this.children = []; this.append(...kids); }
  set textContent(v) { this.children = [new Text(v)]; }
  get textContent() { return this.children.map((c) => c instanceof Text ? c.text : c.textContent).join(""); }
  addEventListener(type, fn) { this.listeners[type] = fn; }
}

const esc = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
  .replace(/"/g, "&quot;");
function serialize(node) {
  if (node instanceof Text) return esc(node.text);
  const attrs = [...node.attrs].map(([k, v]) => ` ${k}="${esc(v)}"`).join("");
  return `<${node.tag}${attrs}>${node.children.map(serialize).join("")}</${node.tag}>`;
}

const [script, dataFile] = process.argv.slice(2);
const data = JSON.parse(fs.readFileSync(dataFile, "utf8"));
const byId = {generated: new Element("span"), problems: new Element("div"), main: new Element("main"),
  refresh: new Element("button")};
const document = {
  body: new Element("body"),
  hidden: false,
  createElement: (tag) => new Element(tag),
  createElementNS: (_ns, tag) => new Element(tag),
  createTextNode: (text) => new Text(text),
  getElementById: (id) => byId[id],
  addEventListener: () => {},
};
const window = {};
window.top = window;
const context = {
  document, window, Node, console,
  setInterval: () => 0,
  fetch: async () => ({ok: true, json: async () => data, text: async () => ""}),
};
vm.runInNewContext(fs.readFileSync(script, "utf8"), context, {filename: script});
setTimeout(() => {
  if (document.body.dataset.loaded !== "true") {
    process.stderr.write("the page did not render\n");
    process.exit(1);
  }
  process.stdout.write(serialize(byId.main));
}, 50);
