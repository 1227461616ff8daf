// The page of `ftvs serve`: one card per model (GET /models), filled by POST /predict {model: "all"}.
"use strict";

const $ = (id) => document.getElementById(id);
const cards = new Map();

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fixed(x, digits) {
  return typeof x === "number" ? x.toFixed(digits) : "–";
}

function card(model) {
  const c = el("article", "card");
  c.dataset.model = model.name;
  c.append(el("h2", "", model.name));
  const kind = [...new Set([model.arm, model.method, model.model_name].filter((x) => x))].join(" · ");
  c.append(el("p", "kind", kind));
  c.append(el("p", "f1", "test macro-F1 " + fixed(model.test && model.test.macro_f1, 4)));
  c.append(el("p", "label", "–"));
  c.append(el("div", "bars"));
  c.append(el("p", "latency", ""));
  return c;
}

function show(c, answer) {
  c.querySelector(".label").textContent = answer.label;
  const bars = c.querySelector(".bars");
  bars.replaceChildren();
  for (const top of answer.top_k) {
    const bar = el("div", "bar");
    const name = el("div", "name");
    name.append(el("span", "", top.label), el("span", "p", (100 * top.probability).toFixed(1) + "%"));
    const track = el("div", "track");
    const fill = el("div", "fill");
    fill.style.width = (100 * top.probability).toFixed(1) + "%";
    track.append(fill);
    bar.append(name, track);
    bars.append(bar);
  }
  c.querySelector(".latency").textContent =
    "latency " + fixed(answer.latency_ms, 1) + " ms (batch of " + answer.batch_size + ")";
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadModels() {
  const r = await fetch("/models");
  const body = await r.json();
  for (const m of body.models) {
    const c = card(m);
    cards.set(m.name, c);
    $("models").append(c);
  }
  status(body.models.length + " models ready");
}

async function classify(event) {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return status("type a text first", true);
  $("submit").disabled = true;
  status("classifying…");
  try {
    const r = await fetch("/predict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ texts: [text], model: "all", top_k: 3 }),
    });
    const body = await r.json();
    if (!r.ok) return status(body.detail || "error " + r.status, true);
    for (const [name, answer] of Object.entries(body.results[0].predictions)) {
      if (cards.has(name)) show(cards.get(name), answer);
    }
    status("answered by " + Object.keys(body.results[0].predictions).length + " models");
  } catch (e) {
    status("the server did not answer: " + e, true);
  } finally {
    $("submit").disabled = false;
  }
}

$("ask").addEventListener("submit", classify);
loadModels().catch((e) => status("could not load the models: " + e, true));
