// The playground: plain script, no dependencies, same origin as the API it calls.
// The token lives in this page's memory; with "keep it for this tab" also in sessionStorage (gone when
// the tab closes). Never in localStorage, cookies or the URL.
"use strict";

const TOKEN_KEY = "sdxl-playground-token";
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let source = null; // the uploaded picture drawn on a canvas at its natural size (orientation applied)
// The longest side sent: the server's --max-size (2048 unless changed; /info's limits.max_size replaces it
// once the token is known). A phone's 12 MP photo as a PNG would pass the 20 MiB body limit; shrunk to
// this it fits, and the server would not make anything larger anyway.
let maxSide = 2048;
let painting = false;
let lastPoint = null; // while painting, in canvas pixels
let painted = false;

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function authHeaders() {
  return token ? {Authorization: "Bearer " + token} : {};
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) {
  $("status").textContent = text;
}

function numberField(id) {
  const text = $(id).value.trim();
  return text === "" ? undefined : Number(text);
}

// --- token ------------------------------------------------------------------------------------------

function syncToken() {
  token = $("token").value.trim();
  if ($("remember").checked && token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  } else {
    sessionStorage.removeItem(TOKEN_KEY);
  }
}

async function describeServer() {
  try {
    const response = await fetch("/info", {headers: authHeaders()});
    if (!response.ok) return;
    const info = await response.json();
    if (info.limits && info.limits.max_size > 0) maxSide = info.limits.max_size;
    $("model").textContent = `Model: ${info.model} on ${info.device || "?"} (${info.dtype || "?"}).`;
  } catch (error) {
    // Only a courtesy line: the generate button reports real problems.
  }
}

// --- picture and mask -------------------------------------------------------------------------------

function loadPicture(file) {
  source = null;
  if (!file) {
    $("stage").hidden = true;
    return;
  }
  const url = URL.createObjectURL(file);
  const image = $("source");
  image.onload = () => {
    // Kept at the decoded size (orientation applied); the mask is painted at that size too, and both are
    // scaled to the same size when sent (fitted), as the server requires.
    const canvas = document.createElement("canvas");
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    canvas.getContext("2d").drawImage(image, 0, 0);
    source = canvas;
    const mask = $("mask");
    mask.width = image.naturalWidth;
    mask.height = image.naturalHeight;
    clearMask();
    $("stage").hidden = false;
    const [width, height] = fitted(canvas);
    const shrunk = width < canvas.width ? ` (sent as ${width}x${height}, the server's largest size)` : "";
    setStatus(`Picture ${canvas.width}x${canvas.height} loaded.${shrunk}`);
  };
  image.onerror = () => showError("That file could not be read as an image.");
  image.src = url;
}

function fitted(canvas) {
  // The canvas's size scaled down, keeping its shape, so that neither side exceeds maxSide.
  const scale = Math.min(1, maxSide / Math.max(canvas.width, canvas.height));
  return [Math.max(1, Math.round(canvas.width * scale)), Math.max(1, Math.round(canvas.height * scale))];
}

function fittedPng(drawn, background) {
  // `drawn` as a PNG data URL at its fitted size, over `background` (a colour) if given.
  const [width, height] = fitted(drawn);
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  if (background) {
    context.fillStyle = background;
    context.fillRect(0, 0, width, height);
  }
  context.imageSmoothingQuality = "high";
  context.drawImage(drawn, 0, 0, width, height);
  return canvas.toDataURL("image/png");
}

function clearMask() {
  const mask = $("mask");
  mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
  painted = false;
}

function maskPoint(event) {
  const mask = $("mask");
  const box = mask.getBoundingClientRect();
  const scale = mask.width / box.width; // canvas pixels (the picture's) per CSS pixel
  return {x: (event.clientX - box.left) * scale, y: (event.clientY - box.top) * scale, scale};
}

function paintTo(event) {
  // A round-capped segment from the last point, so that fast strokes leave no gaps.
  const point = maskPoint(event);
  const from = lastPoint || point;
  const context = $("mask").getContext("2d");
  context.strokeStyle = "#ffffff";
  context.lineCap = "round";
  context.lineJoin = "round";
  context.lineWidth = Number($("brush").value) * point.scale;
  context.beginPath();
  context.moveTo(from.x, from.y);
  context.lineTo(point.x + 0.01, point.y); // a zero-length segment would draw nothing
  context.stroke();
  lastPoint = point;
  painted = true;
}

function maskPng() {
  // White = repaint, black = keep: the HF convention this API documents for parameters.mask. Same size
  // as the picture sent.
  return fittedPng($("mask"), "#000000");
}

// --- the request ------------------------------------------------------------------------------------

function requestBody() {
  const task = mode();
  const prompt = $("prompt").value;
  const parameters = {
    negative_prompt: $("negative").value || undefined,
    num_inference_steps: numberField("steps"),
    guidance_scale: numberField("guidance"),
    width: numberField("width"),
    height: numberField("height"),
    seed: numberField("seed"),
  };
  if (task === "text2img") {
    return {inputs: prompt, parameters};
  }
  if (!source) throw new Error("Choose a picture first.");
  parameters.prompt = prompt;
  parameters.strength = numberField("strength");
  if (task === "inpaint") {
    if (!painted) throw new Error("Paint the area to repaint on the picture first.");
    parameters.mask = maskPng();
  }
  return {inputs: fittedPng(source), parameters};
}

async function errorMessage(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    const error = typeof body.error === "string" ? body.error : body.error && body.error.message;
    if (error) return `${response.status}: ${error}`;
  } catch (ignored) {
    // not JSON: show the text as it came
  }
  return `${response.status} ${response.statusText}: ${text.slice(0, 300)}`;
}

async function generate(event) {
  event.preventDefault();
  syncToken();
  showError("");
  let body;
  try {
    body = JSON.stringify(requestBody());
  } catch (error) {
    showError(error.message);
    return;
  }
  const button = $("generate");
  button.disabled = true;
  setStatus("Generating...");
  const started = performance.now();
  try {
    const response = await fetch("/", {
      method: "POST",
      headers: {...authHeaders(), "Content-Type": "application/json", Accept: "image/png"},
      body,
    });
    if (!response.ok) {
      showError(await errorMessage(response));
      setStatus("Failed.");
      return;
    }
    const blob = await response.blob();
    const output = $("output");
    if (output.src) URL.revokeObjectURL(output.src);
    output.src = URL.createObjectURL(blob);
    await output.decode();
    output.alt = `generated image, seed ${response.headers.get("x-seed")}`;
    $("fact-seed").textContent = response.headers.get("x-seed");
    $("fact-compute").textContent = `${response.headers.get("x-compute-time")} s`;
    $("fact-timing").textContent = response.headers.get("Server-Timing") || "";
    $("fact-total").textContent = `${((performance.now() - started) / 1000).toFixed(2)} s`;
    $("facts").hidden = false;
    setStatus(`Done: ${output.naturalWidth}x${output.naturalHeight} (${mode()}).`);
  } catch (error) {
    showError(`Request failed: ${error.message}`);
    setStatus("Failed.");
  } finally {
    button.disabled = false;
  }
}

// --- wiring -----------------------------------------------------------------------------------------

function showMode() {
  const task = mode();
  $("edit").hidden = task === "text2img";
  $("paint").hidden = task !== "inpaint";
  $("mask").hidden = task !== "inpaint";
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = token;
  $("remember").checked = Boolean(sessionStorage.getItem(TOKEN_KEY));
  $("token").addEventListener("change", () => { syncToken(); describeServer(); });
  $("remember").addEventListener("change", syncToken);
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", showMode);
  $("picture").addEventListener("change", (event) => loadPicture(event.target.files[0]));
  $("clear").addEventListener("click", clearMask);
  const mask = $("mask");
  mask.addEventListener("pointerdown", (event) => {
    painting = true;
    lastPoint = null;
    mask.setPointerCapture(event.pointerId);
    paintTo(event);
  });
  mask.addEventListener("pointermove", (event) => { if (painting) paintTo(event); });
  for (const name of ["pointerup", "pointercancel"]) {
    mask.addEventListener(name, () => { painting = false; lastPoint = null; });
  }
  $("form").addEventListener("submit", generate);
  showMode();
  if (token) describeServer();
});
