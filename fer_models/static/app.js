// The page's loop: copy a camera frame into a canvas, send it to /api/predict as a
// JPEG, draw the answer (boxes, labels, probabilities) over the video and list it;
// then the next frame. An uploaded photo goes the same way, once.
"use strict";

const SEND_EVERY_MS = 250;   // at most four frames a second: plenty for emotions, light on the server
const SEND_WIDTH = 640;      // frames are scaled down to this width before sending
const GREEN = "#50dc50";

const $ = (id) => document.getElementById(id);
const video = $("video"), photo = $("photo"), overlay = $("overlay"), results = $("results");
const grab = document.createElement("canvas");   // the frame being sent
let stream = null;                               // the camera, while it is on

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function send(blob) {
  const form = new FormData();
  form.append("image", blob, "frame.jpg");
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    const answer = await response.json();
    if (!response.ok) { setStatus(answer.error || response.statusText, true); return null; }
    return answer;
  } catch (e) {
    setStatus(`Server unreachable: ${e.message}`, true);
    return null;
  }
}

// -- drawing ---------------------------------------------------------------------------

// answer.box is in the pixels of the image that was sent; scale maps them to the
// pixels of what is shown (the overlay canvas has the shown media's own size).
function draw(answer, width, height, scale) {
  overlay.width = width;
  overlay.height = height;
  const ctx = overlay.getContext("2d");
  const font = Math.max(14, Math.round(width / 40));
  for (const face of answer.faces) {
    const [x, y, w, h] = face.box.map((v) => v * scale);
    ctx.lineWidth = Math.max(2, font / 6);
    ctx.strokeStyle = GREEN;
    ctx.strokeRect(x, y, w, h);
    const label = `${face.label} ${Math.round(face.confidence * 100)}%`;
    ctx.font = `bold ${font}px sans-serif`;
    ctx.fillStyle = "rgba(0,0,0,0.6)";
    ctx.fillRect(x, Math.max(0, y - font - 6), ctx.measureText(label).width + 8, font + 6);
    ctx.fillStyle = GREEN;
    ctx.fillText(label, x + 4, Math.max(font, y - 6));
    drawBars(ctx, face, answer.classes, x, y, w, h, font * 0.7, width, height);
  }
}

// Under the face where there is room (faces side by side keep their charts apart),
// else beside it, as fer_models/detect.py draws them.
function drawBars(ctx, face, classes, x, y, w, h, size, width, height) {
  const row = size + 4, nameW = size * 5, barW = size * 5;
  const chartW = nameW + barW + 8, chartH = row * classes.length + 4;
  let left, top;
  if (y + h + 4 + chartH <= height) {
    left = Math.min(Math.max(0, x), Math.max(0, width - chartW));
    top = y + h + 4;
  } else {
    left = x + w + 6 + chartW <= width ? x + w + 6 : Math.max(0, x - chartW - 6);
    top = Math.min(Math.max(0, y), Math.max(0, height - chartH));
  }
  ctx.fillStyle = "rgba(0,0,0,0.55)";
  ctx.fillRect(left, top, chartW, chartH);
  ctx.font = `${size}px sans-serif`;
  classes.forEach((name, k) => {
    ctx.fillStyle = name === face.label ? GREEN : "#ddd";
    ctx.fillText(name, left + 4, top + row * (k + 1) - 2);
    ctx.fillRect(left + nameW, top + 4 + row * k, Math.max(1, face.probabilities[name] * barW), row - 6);
  });
}

// The same answer as a list, so it can be read (and tested) without the canvas.
function list(answer) {
  if (!answer.faces.length) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = "No face found.";
    results.replaceChildren(li);
    return;
  }
  results.replaceChildren(...answer.faces.map((face) => {
    const li = document.createElement("li");
    li.className = "face";
    li.dataset.label = face.label;
    li.dataset.box = face.box.join(",");
    const title = document.createElement("strong");
    title.className = "label";
    title.textContent = `${face.label} ${Math.round(face.confidence * 100)}%`;
    li.append(title);
    for (const name of answer.classes) {
      const p = face.probabilities[name];
      const bar = document.createElement("div");
      bar.className = name === face.label ? "bar top" : "bar";
      bar.innerHTML = `<span></span><span class="track"><span class="fill"></span></span><span class="value"></span>`;
      bar.children[0].textContent = name;
      bar.querySelector(".fill").style.width = `${(p * 100).toFixed(1)}%`;
      bar.querySelector(".value").textContent = `${Math.round(p * 100)}%`;
      li.append(bar);
    }
    return li;
  }));
}

function show(answer, width, height, scale) {
  draw(answer, width, height, scale);
  list(answer);
  const t = answer.time_ms;
  setStatus(`${answer.faces.length} face(s) · detection ${t.detect} ms · classification ${t.classify} ms`);
}

// -- camera ------------------------------------------------------------------------------

async function startCamera() {
  if (!navigator.mediaDevices) {   // browsers offer cameras to secure pages only
    setStatus("The camera needs this page on localhost or over HTTPS. Uploading a photo works anyway.", true);
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (e) {
    setStatus(`No camera: ${e.message}. Allow camera access for this page, or upload a photo.`, true);
    return;
  }
  photo.hidden = true;
  video.hidden = false;
  video.srcObject = stream;
  await video.play();
  $("start").disabled = true;
  $("stop").disabled = false;
  setStatus("Camera on.");
  sendFrames(stream);
}

function stopCamera() {
  if (stream) stream.getTracks().forEach((track) => track.stop());
  stream = null;
  video.srcObject = null;
  $("start").disabled = false;
  $("stop").disabled = true;
}

async function sendFrames(current) {
  while (stream === current) {
    const started = performance.now();
    if (video.videoWidth) {
      const scale = Math.min(1, SEND_WIDTH / video.videoWidth);
      grab.width = Math.round(video.videoWidth * scale);
      grab.height = Math.round(video.videoHeight * scale);
      grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
      const blob = await new Promise((resolve) => grab.toBlob(resolve, "image/jpeg", 0.85));
      const answer = blob && await send(blob);
      if (answer && stream === current) show(answer, video.videoWidth, video.videoHeight, 1 / scale);
    }
    const wait = SEND_EVERY_MS - (performance.now() - started);
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, wait)));
  }
}

// -- photo -------------------------------------------------------------------------------

async function uploadPhoto(file) {
  stopCamera();
  video.hidden = true;
  photo.hidden = false;
  photo.src = URL.createObjectURL(file);
  await photo.decode().catch(() => {});   // an undecodable file: the server says why
  setStatus(`Sending ${file.name}...`);
  const answer = await send(file);
  if (answer) {
    show(answer, answer.width, answer.height, 1);
  } else {
    overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
    results.replaceChildren();
  }
}

$("start").addEventListener("click", startCamera);
$("stop").addEventListener("click", () => { stopCamera(); setStatus("Camera off."); });
$("photo-input").addEventListener("change", (e) => {
  if (e.target.files.length) uploadPhoto(e.target.files[0]);
  e.target.value = "";
});
