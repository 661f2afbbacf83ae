// finegrained annotate: the page. No framework, no build step.
//
// Safety: prompts and completions are untrusted. They only ever reach the page through textContent (or
// document.createTextNode); never innerHTML. The server's Content-Security-Policy forbids inline script too.
//
// Offsets: the data format uses Python str indices (Unicode code points); JavaScript strings and DOM
// selections count UTF-16 code units, where a character outside the Basic Multilingual Plane (an emoji)
// takes two. `Offsets` converts between the two for one text.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

class Offsets {
  constructor(text) {
    this.text = text;
    this.chars = Array.from(text); // one entry per code point
    this.cpToU16 = new Array(this.chars.length + 1);
    // u16ToCp[u] = number of code points that start before UTF-16 unit u (floor inside a surrogate pair)
    this.u16ToCpFloor = new Array(text.length + 1);
    let u = 0;
    for (let i = 0; i < this.chars.length; i++) {
      this.cpToU16[i] = u;
      for (let k = 0; k < this.chars[i].length; k++) this.u16ToCpFloor[u + k] = i;
      u += this.chars[i].length;
    }
    this.cpToU16[this.chars.length] = u;
    this.u16ToCpFloor[u] = this.chars.length;
  }
  // A UTF-16 position inside a surrogate pair rounds down for a start and up for an end.
  startCp(u16) { return this.u16ToCpFloor[u16]; }
  endCp(u16) {
    const cp = this.u16ToCpFloor[u16];
    return this.cpToU16[cp] === u16 ? cp : cp + 1;
  }
  slice(startCp, endCp) { return this.text.slice(this.cpToU16[startCp], this.cpToU16[endCp]); }
}

const state = {
  schema: null,
  spanLabels: [], // [{label, category, colour}] in shortcut order
  categoryColour: {},
  nItems: 0,
  annotated: [],
  index: 0,
  item: null,
  offsets: null,
  spans: [], // [{start, end, label}] in code points
  pending: null, // {start, end} in code points
  choices: {}, // preference category -> "A" | "B" | "tie"
  dirty: false,
  busy: false,
};

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status}`);
  return body;
}

function setStatus(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

// ---- schema and guidance ------------------------------------------------------------------------

function setupSchema(schema) {
  state.schema = schema;
  $("schema-description").textContent = schema.description || schema.name;
  const list = $("category-list");
  list.replaceChildren();
  schema.categories.forEach((c, i) => {
    state.categoryColour[c.name] = `cat-${i % 8}`;
    const head = el("div", {}, [el("span", { class: `swatch cat-${i % 8}`, text: c.name }),
      el("span", { class: "muted", text: ` ${c.kind === "span" ? c.granularity.replace("_", "-") + " spans" : "comparison"}` })]);
    const item = el("li", {}, [head, el("div", { class: "desc", text: c.description || "" })]);
    if (c.error_types.length) item.append(el("div", { class: "desc", text: `Error types: ${c.error_types.join(", ")}` }));
    list.append(item);
  });
  state.spanLabels = [];
  for (const c of schema.categories.filter((c) => c.kind === "span")) {
    const labels = c.error_types.length ? c.error_types : [c.name];
    for (const label of labels) state.spanLabels.push({ label, category: c.name, colour: state.categoryColour[c.name] });
  }
  const buttons = $("label-buttons");
  buttons.replaceChildren();
  state.spanLabels.forEach((entry, i) => {
    const children = i < 9 ? [el("kbd", { text: String(i + 1) }), entry.label] : [entry.label];
    const button = el("button", { type: "button", class: `label-button ${entry.colour}`, title: `${entry.category}` }, children);
    button.dataset.label = entry.label;
    button.addEventListener("click", () => addSpan(entry.label));
    buttons.append(button);
  });
}

function labelColour(label) {
  const entry = state.spanLabels.find((e) => e.label === label);
  return entry ? entry.colour : state.categoryColour[label] || "cat-7";
}

function labelCategory(label) {
  const entry = state.spanLabels.find((e) => e.label === label);
  return entry ? entry.category : label;
}

// ---- navigation ---------------------------------------------------------------------------------

function updateProgress() {
  const done = state.annotated.filter(Boolean).length;
  $("progress-text").textContent = `Item ${state.index + 1} of ${state.nItems} · ${done} annotated`;
  $("progress").max = Math.max(state.nItems, 1);
  $("progress").value = done;
  $("prev").disabled = state.index <= 0;
  $("next").disabled = state.index >= state.nItems - 1;
  $("next-todo").disabled = !state.annotated.some((a) => !a);
}

function confirmLeave() {
  return !state.dirty || window.confirm("This item has unsaved changes. Leave it anyway?");
}

async function go(index) {
  if (index < 0 || index >= state.nItems) return;
  if (index !== state.index && !confirmLeave()) return;
  const data = await api(`/api/items/${index}`);
  state.index = index;
  history.replaceState(null, "", `#item=${index + 1}`);
  showItem(data.item, data.annotation);
}

function showItem(item, annotation) {
  state.item = item;
  state.pending = null;
  state.dirty = false;
  state.choices = {};
  setStatus("");
  const prompt = item.prompt;
  $("prompt-text").textContent = prompt;
  const promptChars = Array.from(prompt);
  $("prompt-preview").textContent = promptChars.length > 120 ? promptChars.slice(0, 120).join("") + "…" : prompt;
  $("prompt-box").open = promptChars.length <= 400; // long prompts start collapsed
  const when = annotation ? `annotated ${annotation.submitted_at.replace("T", " ").slice(0, 19)}` : "";
  if (item.kind === "span") {
    $("span-mode").hidden = false;
    $("pair-mode").hidden = true;
    $("item-id").textContent = item.id;
    $("item-status").textContent = when;
    state.offsets = new Offsets(item.completion);
    const source = annotation ? annotation.spans : item.suggested_spans || [];
    state.spans = source.map((s) => ({ start: s.start, end: s.end, label: s.label }));
    const correction = annotation && typeof annotation.correction === "string" ? annotation.correction : null;
    $("correction").value = correction === null ? item.completion : correction;
    $("correction-box").open = correction !== null;
    renderCompletion();
    renderSpanList();
    renderSelection();
  } else {
    $("span-mode").hidden = true;
    $("pair-mode").hidden = false;
    $("pair-id").textContent = item.id;
    $("pair-status").textContent = when;
    $("completion-a").textContent = item.completion_a;
    $("completion-b").textContent = item.completion_b;
    state.choices = annotation ? { ...annotation.choices } : {};
    renderPreferences();
  }
  updateProgress();
}

// ---- span mode ----------------------------------------------------------------------------------

function renderCompletion() {
  const container = $("completion");
  const n = state.offsets.chars.length;
  const cuts = new Set([0, n]);
  for (const s of state.spans) { cuts.add(s.start); cuts.add(s.end); }
  const points = [...cuts].sort((a, b) => a - b);
  const pieces = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const [a, b] = [points[i], points[i + 1]];
    const covering = state.spans.filter((s) => s.start <= a && s.end >= b);
    const piece = el("span", { text: state.offsets.slice(a, b) });
    if (covering.length) {
      const categories = [...new Set(covering.map((s) => labelCategory(s.label)))];
      // The innermost span gives the colour (it is the one hidden under the others); overlap is underlined.
      const innermost = covering.reduce((x, y) => (y.end - y.start < x.end - x.start ? y : x));
      piece.className = `hl ${labelColour(innermost.label)}${categories.length > 1 ? " multi" : ""}`;
      piece.title = covering.map((s) => s.label).join(", ");
    }
    pieces.push(piece);
  }
  container.replaceChildren(...pieces);
}

function renderSpanList() {
  const list = $("span-list");
  const sorted = state.spans.map((s, i) => [s, i]).sort((x, y) => x[0].start - y[0].start || x[0].end - y[0].end);
  list.replaceChildren(...sorted.map(([s, i]) => {
    const remove = el("button", { type: "button", class: "remove", text: "Remove", title: "Remove this span" });
    remove.addEventListener("click", () => { state.spans.splice(i, 1); state.dirty = true; refreshSpans(); });
    return el("li", {}, [
      el("span", { class: `swatch ${labelColour(s.label)}`, text: s.label }),
      el("span", { class: "quote", text: `“${state.offsets.slice(s.start, s.end)}”` }),
      el("span", { class: "muted", text: `${s.start}–${s.end}` }),
      remove,
    ]);
  }));
  $("no-spans").hidden = state.spans.length > 0;
  $("submit").disabled = state.spans.length === 0;
  $("submit").title = state.spans.length ? "Save these spans (Ctrl+Enter)" : "Mark a span first, or use “No errors”";
  $("no-errors").disabled = state.spans.length > 0;
}

function refreshSpans() {
  renderCompletion();
  renderSpanList();
  renderSelection();
}

function renderSelection() {
  const pending = state.pending;
  $("selection-text").hidden = !pending;
  $("selection-hint").hidden = Boolean(pending);
  if (pending) $("selection-text").textContent = `Selected: “${state.offsets.slice(pending.start, pending.end)}”`;
  for (const button of $("label-buttons").children) button.disabled = !pending;
}

// UTF-16 length of the completion's text from its start to (node, offset).
function u16Before(container, node, offset) {
  const range = document.createRange();
  range.setStart(container, 0);
  range.setEnd(node, offset);
  return range.toString().length;
}

function readSelection() {
  const container = $("completion");
  const selection = window.getSelection();
  if (!state.offsets || !selection || selection.rangeCount === 0 || selection.isCollapsed) return null;
  const range = selection.getRangeAt(0);
  if (!range.intersectsNode(container)) return null;
  // Clamp a selection that runs past the completion's edges to the completion.
  let u16Start = 0;
  let u16End = state.offsets.text.length;
  if (container.contains(range.startContainer)) u16Start = u16Before(container, range.startContainer, range.startOffset);
  if (container.contains(range.endContainer)) u16End = u16Before(container, range.endContainer, range.endOffset);
  let start = state.offsets.startCp(u16Start);
  let end = state.offsets.endCp(u16End);
  const chars = state.offsets.chars;
  while (start < end && /\s/u.test(chars[start])) start++; // surrounding spaces are not part of an error
  while (end > start && /\s/u.test(chars[end - 1])) end--;
  return start < end ? { start, end } : null;
}

function onSelectionChange() {
  if (!state.item || state.item.kind !== "span") return;
  const selected = readSelection();
  if (selected) { state.pending = selected; renderSelection(); }
}

function addSpan(label) {
  // selectionchange is asynchronous: a key pressed right after selecting can arrive before it.
  if (!state.pending) state.pending = readSelection();
  if (!state.pending) { setStatus("Select some text in the completion first."); return; }
  const { start, end } = state.pending;
  if (!state.spans.some((s) => s.start === start && s.end === end && s.label === label)) {
    state.spans.push({ start, end, label });
    state.dirty = true;
  }
  state.pending = null;
  window.getSelection().removeAllRanges();
  refreshSpans();
  setStatus(`Marked “${state.offsets.slice(start, end)}” as ${label}.`);
}

async function submitSpans(spans) {
  // the correction box starts as the completion: unchanged means no correction (the server leaves it out)
  const correction = $("correction").value;
  await submit({ id: state.item.id, spans, correction: correction === state.item.completion ? null : correction });
}

// ---- pair mode ----------------------------------------------------------------------------------

function preferenceCategories() {
  return state.schema.categories.filter((c) => c.kind === "preference");
}

function renderPreferences() {
  const rows = preferenceCategories().map((c) => {
    const buttons = [["A", "A is better"], ["tie", "Tie"], ["B", "B is better"]].map(([value, text]) => {
      const button = el("button", { type: "button", text });
      button.dataset.category = c.name;
      button.dataset.choice = value;
      button.setAttribute("aria-pressed", String(state.choices[c.name] === value));
      button.addEventListener("click", () => choose(c.name, value));
      return button;
    });
    return el("div", { class: "pref-row" }, [
      el("span", { class: `name swatch ${state.categoryColour[c.name]}`, text: c.name }),
      el("span", { class: "desc", text: c.description || "" }),
      ...buttons,
    ]);
  });
  $("pref-rows").replaceChildren(...rows);
  const missing = preferenceCategories().filter((c) => !state.choices[c.name]);
  $("submit-pair").disabled = missing.length > 0;
  $("submit-pair").title = missing.length ? `Answer: ${missing.map((c) => c.name).join(", ")}` : "Save (Ctrl+Enter)";
}

function choose(category, value) {
  state.choices[category] = value;
  state.dirty = true;
  renderPreferences();
}

// ---- saving -------------------------------------------------------------------------------------

async function submit(payload) {
  if (state.busy) return;
  state.busy = true;
  const index = state.index;
  try {
    const result = await api(`/api/items/${index}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
    state.annotated[index] = true;
    state.dirty = false;
    const next = result.next_unannotated;
    if (next === null || next === undefined) {
      await go(index);
      setStatus(`Saved. All ${state.nItems} items are annotated.`);
    } else {
      await go(next);
      setStatus(`Saved item ${index + 1}.`);
    }
  } catch (e) {
    setStatus(`Not saved: ${e.message}`, true);
  } finally {
    state.busy = false;
  }
}

function submitCurrent() {
  if (!state.item) return;
  if (state.item.kind === "span") {
    if (state.spans.length) submitSpans(state.spans);
  } else if (!$("submit-pair").disabled) {
    submit({ id: state.item.id, choices: state.choices });
  }
}

// ---- keyboard -----------------------------------------------------------------------------------

function onKey(event) {
  if (event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement) return;
  if ((event.ctrlKey || event.metaKey) && event.key === "Enter") { event.preventDefault(); submitCurrent(); return; }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (!state.item) return;
  if (state.item.kind === "span" && /^[1-9]$/.test(event.key)) {
    const entry = state.spanLabels[Number(event.key) - 1];
    if (entry) { event.preventDefault(); addSpan(entry.label); }
  } else if (state.item.kind === "pair" && ["a", "b", "t"].includes(event.key.toLowerCase())) {
    const open = preferenceCategories().find((c) => !state.choices[c.name]) || preferenceCategories()[0];
    const value = { a: "A", b: "B", t: "tie" }[event.key.toLowerCase()];
    if (open) choose(open.name, value);
  } else if (event.key === "Escape") {
    state.pending = null;
    window.getSelection().removeAllRanges();
    if (state.item.kind === "span") renderSelection();
  } else if (event.key === "ArrowLeft") {
    go(state.index - 1);
  } else if (event.key === "ArrowRight") {
    go(state.index + 1);
  }
}

// ---- start --------------------------------------------------------------------------------------

async function start() {
  try {
    const s = await api("/api/state");
    setupSchema(s.schema);
    state.nItems = s.n_items;
    state.annotated = s.annotated;
    $("meta").textContent = `schema ${s.schema.name} · annotator ${s.annotator}`;
    const fromHash = /^#item=(\d+)$/.exec(location.hash);
    let index = fromHash ? Number(fromHash[1]) - 1 : s.first_unannotated ?? 0;
    if (!(index >= 0 && index < s.n_items)) index = s.first_unannotated ?? 0;
    state.index = index;
    await go(index);
    if (s.first_unannotated === null) setStatus(`All ${s.n_items} items are annotated; you can review and re-submit.`);
  } catch (e) {
    setStatus(`Could not load: ${e.message}`, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("prev").addEventListener("click", () => go(state.index - 1));
  $("next").addEventListener("click", () => go(state.index + 1));
  $("next-todo").addEventListener("click", () => {
    const n = state.nItems;
    for (let k = 1; k <= n; k++) {
      const i = (state.index + k) % n;
      if (!state.annotated[i]) { go(i); return; }
    }
  });
  $("submit").addEventListener("click", () => submitSpans(state.spans));
  $("no-errors").addEventListener("click", () => submitSpans([]));
  $("correction").addEventListener("input", () => { state.dirty = true; });
  $("reset-correction").addEventListener("click", () => { $("correction").value = state.item.completion; state.dirty = true; });
  $("submit-pair").addEventListener("click", submitCurrent);
  document.addEventListener("selectionchange", onSelectionChange);
  document.addEventListener("keydown", onKey);
  window.addEventListener("beforeunload", (event) => { if (state.dirty) event.preventDefault(); });
  start();
});
