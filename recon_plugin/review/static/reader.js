// Blinded reader study: two images side by side, synchronised zoom/pan, shared window/level,
// preference and 5-point rubric, every change saved at once. Plain JS, no build step.
"use strict";

const SIDES = ["left", "right"];
const state = {
  list: null, // the API's reading list
  index: 0,
  pixels: {}, // side -> {data: Float32Array, rows, cols}
  view: { scale: 1, x: 0, y: 0 }, // zoom factor and pan (CSS pixels), shared by both canvases
  win: { width: 1, level: 0.5 }, // shared window/level in normalised units (99.5th percentile = 1)
  cursor: 0, // index of the rubric box that digit keys fill
  saves: 0, // saves in flight
};
window.__review = state; // for tests and debugging

const $ = (id) => document.getElementById(id);
const canvases = { left: $("canvas-left"), right: $("canvas-right") };

function item() { return state.list.items[state.index]; }
function sidesOf(it) { return it.kind === "pair" ? SIDES : ["left"]; }
function fieldsOf(it) {
  const criteria = Object.keys(state.list.rubric);
  return sidesOf(it).flatMap((side) => criteria.map((c) => [side, c]));
}
function emptyAnswer() {
  const scores = {};
  for (const side of SIDES) scores[side] = Object.fromEntries(Object.keys(state.list.rubric).map((c) => [c, null]));
  return { preference: null, scores };
}
function answerOf(it) {
  if (!it.answer) it.answer = emptyAnswer();
  return it.answer;
}
function isComplete(it) {
  const a = it.answer;
  if (!a) return false;
  if (it.kind === "pair" && !a.preference) return false;
  return fieldsOf(it).every(([side, c]) => Number.isInteger(a.scores[side][c]));
}

// ---------------------------------------------------------------- loading

async function load() {
  const response = await fetch("api/items", { cache: "no-store" });
  if (!response.ok) throw new Error(`the reading list could not be loaded (${response.status})`);
  state.list = await response.json();
  $("scale").textContent = Object.entries(state.list.scale).map(([k, v]) => `${k} ${v}`).join(" · ");
  buildRubrics();
  await show(state.list.resume);
}

function buildRubrics() {
  for (const side of SIDES) {
    const box = $(`rubric-${side}`);
    box.textContent = "";
    for (const [criterion, label] of Object.entries(state.list.rubric)) {
      const name = document.createElement("div");
      name.className = "label";
      name.textContent = label;
      name.dataset.field = `${side}.${criterion}`;
      box.append(name);
      for (let score = 1; score <= 5; score++) {
        const button = document.createElement("button");
        button.textContent = String(score);
        button.title = state.list.scale[String(score)];
        button.dataset.side = side;
        button.dataset.criterion = criterion;
        button.dataset.score = String(score);
        button.addEventListener("click", () => {
          const fields = fieldsOf(item());
          const at = fields.findIndex(([s, c]) => s === side && c === criterion);
          setScore(side, criterion, score);
          if (at >= 0) state.cursor = Math.min(at + 1, fields.length - 1);
          render();
        });
        box.append(button);
      }
    }
  }
}

async function show(index) {
  const total = state.list.items.length;
  if (total === 0) { $("progress").textContent = "This reading list is empty."; return; }
  state.index = Math.max(0, Math.min(index, total - 1));
  const ticket = (state.ticket = (state.ticket || 0) + 1);
  const it = item();
  const fields = fieldsOf(it);
  const firstEmpty = fields.findIndex(([s, c]) => !(it.answer && Number.isInteger(it.answer.scores[s][c])));
  state.cursor = firstEmpty >= 0 ? firstEmpty : 0;
  const sides = sidesOf(it);
  const loaded = await Promise.all(sides.map(async (side, k) => {
    const meta = it.images[k];
    const response = await fetch(meta.url, { cache: "no-store" });
    if (!response.ok) throw new Error(`image could not be loaded (${response.status})`);
    return [side, { data: new Float32Array(await response.arrayBuffer()), rows: meta.rows, cols: meta.cols }];
  }));
  if (ticket !== state.ticket) return; // a later show() took over while the images loaded
  state.pixels = Object.fromEntries(loaded);
  $("panel-right").classList.toggle("hidden", it.kind !== "pair");
  $("preference").classList.toggle("hidden", it.kind !== "pair");
  $("title-left").textContent = it.kind === "pair" ? "Left" : "Image";
  render();
}

// ---------------------------------------------------------------- drawing

function render() {
  const it = item();
  const total = state.list.items.length;
  $("progress").textContent = `Item ${state.index + 1} of ${total}`;
  const answered = state.list.items.filter(isComplete).length;
  $("answered").textContent = `${answered} of ${total} answered${answered === total ? " — all done, thank you" : ""}`;
  $("answered").classList.toggle("all", answered === total);
  const a = it.answer || emptyAnswer();
  for (const button of document.querySelectorAll("#preference button")) {
    button.classList.toggle("selected", a.preference === button.dataset.pref);
  }
  for (const button of document.querySelectorAll(".rubric button")) {
    button.classList.toggle("selected", a.scores[button.dataset.side][button.dataset.criterion] === Number(button.dataset.score));
  }
  const [cs, cc] = fieldsOf(it)[state.cursor] || [];
  for (const label of document.querySelectorAll(".rubric .label")) {
    label.classList.toggle("active", label.dataset.field === `${cs}.${cc}`);
  }
  $("window-width").value = String(state.win.width);
  $("window-level").value = String(state.win.level);
  draw();
}

function draw() {
  for (const side of SIDES) {
    const canvas = canvases[side];
    const image = state.pixels[side];
    if (!image || canvas.offsetParent === null) continue;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    canvas.dataset.view = `${state.view.scale.toFixed(3)} ${state.view.x.toFixed(1)} ${state.view.y.toFixed(1)}`;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, w, h);
    const fit = Math.min(w / image.cols, h / image.rows);
    const s = fit * state.view.scale;
    ctx.imageSmoothingEnabled = s < 4;
    ctx.setTransform(s, 0, 0, s, w / 2 + state.view.x * dpr - (image.cols * s) / 2, h / 2 + state.view.y * dpr - (image.rows * s) / 2);
    ctx.drawImage(windowed(image), 0, 0);
  }
}

function windowed(image) {
  const low = state.win.level - state.win.width / 2;
  const gain = 255 / state.win.width;
  const off = document.createElement("canvas");
  off.width = image.cols;
  off.height = image.rows;
  const ctx = off.getContext("2d");
  const out = ctx.createImageData(image.cols, image.rows);
  for (let i = 0; i < image.data.length; i++) {
    const v = Math.max(0, Math.min(255, (image.data[i] - low) * gain));
    out.data[4 * i] = out.data[4 * i + 1] = out.data[4 * i + 2] = v;
    out.data[4 * i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  return off;
}

function resetView() {
  state.view = { scale: 1, x: 0, y: 0 };
  state.win = { width: 1, level: 0.5 };
  render();
}

// ---------------------------------------------------------------- answers

function setPreference(pref) {
  const it = item();
  if (it.kind !== "pair") return;
  answerOf(it).preference = pref;
  render();
  save(it);
}

function setScore(side, criterion, score) {
  const it = item();
  answerOf(it).scores[side][criterion] = score;
  render();
  save(it);
}

function save(it) {
  // Saves go out one after another (each holds the item's whole state at the time of the change), so a
  // slower earlier request can never overwrite a later answer.
  const body = { preference: it.kind === "pair" ? it.answer.preference : null, scores: {} };
  for (const side of sidesOf(it)) body.scores[side] = { ...it.answer.scores[side] };
  state.saves++;
  setStatus("Saving…");
  state.queue = (state.queue || Promise.resolve()).then(() => send(it.id, body));
  return state.queue;
}

async function send(id, body) {
  try {
    const response = await fetch(`api/answers/${encodeURIComponent(id)}`, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const reply = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(reply.error || `HTTP ${response.status}`);
    state.saves--;
    if (state.saves === 0) setStatus("Saved");
  } catch (error) {
    state.saves--;
    setStatus(`Not saved: ${error.message}`, true);
  }
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

// ---------------------------------------------------------------- input

function onKey(event) {
  if (!state.list || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target instanceof HTMLInputElement) return;
  const it = item();
  const fields = fieldsOf(it);
  const key = event.key;
  if (key === "ArrowLeft") setPreference("left");
  else if (key === "ArrowRight") setPreference("right");
  else if (key === "ArrowDown") setPreference("none");
  else if (/^[1-5]$/.test(key)) {
    const [side, criterion] = fields[state.cursor];
    state.cursor = Math.min(state.cursor + 1, fields.length - 1);
    setScore(side, criterion, Number(key));
  } else if (key === "Backspace") { state.cursor = Math.max(0, state.cursor - 1); render(); }
  else if (key === "n" || key === "Enter") show(state.index + 1);
  else if (key === "p") show(state.index - 1);
  else if (key === "r") resetView();
  else return;
  event.preventDefault();
}

function bindCanvas(canvas) {
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    const rect = canvas.getBoundingClientRect();
    const mx = event.clientX - rect.left - rect.width / 2;
    const my = event.clientY - rect.top - rect.height / 2;
    const factor = Math.exp(-event.deltaY * 0.0015);
    const scale = Math.max(0.25, Math.min(40, state.view.scale * factor));
    const f = scale / state.view.scale;
    state.view = { scale, x: mx - (mx - state.view.x) * f, y: my - (my - state.view.y) * f };
    draw();
  }, { passive: false });
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
  canvas.addEventListener("dblclick", resetView);
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    let last = [event.clientX, event.clientY];
    const button = event.button;
    const move = (e) => {
      const dx = e.clientX - last[0];
      const dy = e.clientY - last[1];
      last = [e.clientX, e.clientY];
      if (button === 2) {
        state.win.width = Math.max(0.02, Math.min(5, state.win.width * Math.exp(dx * 0.005)));
        state.win.level = Math.max(-1, Math.min(3, state.win.level - dy * 0.003 * state.win.width));
        render();
      } else {
        state.view.x += dx;
        state.view.y += dy;
        draw();
      }
    };
    const up = () => {
      canvas.removeEventListener("pointermove", move);
      canvas.removeEventListener("pointerup", up);
      canvas.removeEventListener("pointercancel", up);
    };
    canvas.addEventListener("pointermove", move);
    canvas.addEventListener("pointerup", up);
    canvas.addEventListener("pointercancel", up);
  });
}

for (const canvas of Object.values(canvases)) bindCanvas(canvas);
for (const button of document.querySelectorAll("#preference button")) {
  button.addEventListener("click", () => setPreference(button.dataset.pref));
}
$("prev").addEventListener("click", () => show(state.index - 1));
$("next").addEventListener("click", () => show(state.index + 1));
$("reset-view").addEventListener("click", resetView);
$("window-width").addEventListener("input", (e) => { state.win.width = Number(e.target.value); draw(); });
$("window-level").addEventListener("input", (e) => { state.win.level = Number(e.target.value); draw(); });
for (const id of ["window-width", "window-level"]) $(id).addEventListener("change", (e) => e.target.blur()); // keys again
document.addEventListener("keydown", onKey);
window.addEventListener("resize", draw);
load().catch((error) => setStatus(error.message, true));
