// The service's page: the job list, a job's windows and merged results, a window's frames
// and a 3D view of its points and cameras. Hash routes: #/, #/job/ID, #/job/ID/window/PATH.
import * as THREE from "three";
import { OrbitControls } from "/static/vendor/OrbitControls.js";

const main = document.getElementById("main");
let stopCurrent = () => {};

const esc = (v) => String(v ?? "").replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
// a path of the job's output in a URL: each part percent-encoded ("#", "%", "?" in names)
const url = (path) => String(path ?? "").split("/").map(encodeURIComponent).join("/");
const num = (v, digits = 0) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const state = (s) => `<span class="state ${esc(s)}">${esc(s)}</span>`;

async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`${url}: ${response.status} ${await response.text()}`);
  return response.json();
}

function progress(job) {
  const total = job.total ?? 0;
  const width = total ? Math.round((100 * job.done) / total) : 0;
  return `<span class="bar"><span style="width:${width}%"></span></span>
          ${job.done}/${job.total ?? "?"}`;
}

async function showStatus() {
  try {
    const s = await getJson("/status");
    const model = s.model ? `${s.model.checkpoint.name} on ${s.model.device}` : "no model loaded";
    document.getElementById("status").textContent =
      `${model} · ${s.model_loads} load(s) · ${s.queue} queued`;
  } catch (e) { /* shown again at the next refresh */ }
}

// ---- the job list -------------------------------------------------------------------------
async function jobList() {
  main.innerHTML = `<h1>Jobs</h1><table id="jobs"><thead><tr><th>job</th><th>state</th>
    <th>windows</th><th>stage</th><th>output</th><th>created</th></tr></thead><tbody>
    </tbody></table>`;
  const refresh = async () => {
    const { jobs } = await getJson("/jobs");
    const rows = jobs.map((j) => `<tr>
      <td><a href="#/job/${esc(j.id)}">${esc(j.id)}</a></td><td>${state(j.state)}</td>
      <td>${progress(j)}</td><td class="muted">${esc(j.stage ?? j.error ?? "")}</td>
      <td>${esc(j.options.output_dir)}</td><td class="muted">${esc(j.created_at)}</td></tr>`);
    main.querySelector("tbody").innerHTML =
      rows.join("") || `<tr><td colspan="6" class="muted">no jobs yet</td></tr>`;
    document.body.dataset.ready = "jobs";
  };
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 1000);
  return () => clearInterval(timer);
}

// ---- one job ------------------------------------------------------------------------------
async function jobPage(id) {
  main.innerHTML = `<h1>Job ${esc(id)}</h1><div id="head"></div>
    <h2>Windows</h2><div id="windows"></div><div id="digest"></div>
    <div id="merges"></div>`;
  const render = async (job) => {
    const result = job.result ?? {};
    main.querySelector("#head").innerHTML = `<p>${state(job.state)} ${progress(job)}
      <span class="muted">${esc(job.stage ?? "")}</span>
      ${job.state === "running" || job.state === "queued"
        ? '<button id="cancel">cancel</button>' : ""}</p>
      ${result.line ? `<pre>${esc(result.line)}</pre>` : ""}
      ${job.error ? `<pre>${esc(job.error)}</pre>` : ""}
      <p class="muted">output ${esc(job.options.output_dir)} · attempt ${job.attempts}
      ${result.peak_memory_mb ? ` · peak ${num(result.peak_memory_mb)} MiB` : ""}</p>`;
    const button = main.querySelector("#cancel");
    if (button) button.onclick = () => fetch(`/jobs/${id}/cancel`, { method: "POST" });
    const data = await getJson(`/jobs/${id}/windows`);
    main.querySelector("#windows").innerHTML = data.windows.length ? `<table>
      <thead><tr><th>window</th><th>status</th><th>frames</th><th>registered</th>
      <th>points</th><th>reproj. error (px)</th><th>reason</th></tr></thead><tbody>
      ${data.windows.map((w) => `<tr>
        <td><a href="#/job/${esc(id)}/window/${esc(url(w.path))}">${esc(w.path)}</a></td>
        <td>${state(w.status)}</td><td class="num">${num(w.num_frames)}</td>
        <td class="num">${num(w.num_registered)}</td><td class="num">${num(w.num_points3D)}</td>
        <td class="num">${num(w.mean_reprojection_error, 3)}</td>
        <td class="muted">${esc(w.error ?? (w.skipped ? "already complete" : ""))}</td>
      </tr>`).join("")}</tbody></table>` : `<p class="muted">no window finished yet</p>`;
    const digest = data.digest ?? [];
    main.querySelector("#digest").innerHTML = digest.length
      ? `<h2>Digest</h2><pre>${digest.map(esc).join("\n")}</pre>` : "";
    main.querySelector("#merges").innerHTML = data.merges.map((m) => `<div class="merged">
      <h2>Merged: ${esc(m.folder)}</h2><p class="muted">${m.segments} segment(s)</p>
      ${m.picture ? `<img alt="trajectory" src="/jobs/${esc(id)}/file/${esc(url(m.picture))}">`
        : ""}</div>`).join("");
    document.body.dataset.ready = "job";
  };
  await render(await getJson(`/jobs/${id}`));
  const events = new EventSource(`/jobs/${id}/events`);
  const update = async () => render(await getJson(`/jobs/${id}`)).catch(() => {});
  events.addEventListener("progress", update);
  events.addEventListener("end", () => { events.close(); update(); });
  return () => events.close();
}

// ---- one window ---------------------------------------------------------------------------
async function windowPage(id, path) {
  const details = await getJson(`/jobs/${id}/window/${url(path)}`);
  const info = details.info;
  main.innerHTML = `<h1><a href="#/job/${esc(id)}">Job ${esc(id)}</a> / ${esc(path)}</h1>
    <p>${state(info.status)} ${num(info.num_registered)} of ${num(info.num_frames)} frames
    registered · ${num(info.num_points3D)} points · reprojection error
    ${num(info.mean_reprojection_error, 3)} px ${info.error ? ` · ${esc(info.error)}` : ""}</p>
    <canvas id="view"></canvas>
    <p class="muted">drag to orbit, right-drag to pan, wheel to zoom</p>
    <h2>Frames</h2><div class="thumbs">${details.images.map((name) => `<figure>
      <img loading="lazy" alt="${esc(name)}" src="/jobs/${esc(id)}/thumb/${esc(url(path))}/images/${esc(url(name))}?size=160">
      <figcaption>${esc(name)}</figcaption></figure>`).join("")}</div>`;
  if (info.status !== "ok") { document.body.dataset.ready = "window"; return () => {}; }
  const scene = await getJson(`/jobs/${id}/scene/${url(path)}`);
  return showScene(main.querySelector("#view"), scene);
}

function showScene(canvas, data) {
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: true,
                                             preserveDrawingBuffer: true });
  renderer.setPixelRatio(window.devicePixelRatio);
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0x10151b);
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute("position", new THREE.Float32BufferAttribute(data.points, 3));
  geometry.setAttribute("color",
    new THREE.Float32BufferAttribute(data.colors.map((c) => c / 255), 3));
  const { center, radius } = extent(data.points);
  scene.add(new THREE.Points(geometry, new THREE.PointsMaterial({
    size: radius / 120, vertexColors: true, sizeAttenuation: true })));
  scene.add(frustums(data.cameras, radius / 8));
  const camera = new THREE.PerspectiveCamera(50, 1, radius / 1000, radius * 100);
  camera.up.set(0, -1, 0);  // the window's world has OpenCV axes: y points down
  const first = data.cameras[0];
  const eye = first ? new THREE.Vector3(...first.center) : center.clone();
  const back = first ? new THREE.Vector3(first.rotation[0][2], first.rotation[1][2],
                                         first.rotation[2][2]) : new THREE.Vector3(0, 0, 1);
  camera.position.copy(eye).addScaledVector(back, -radius * 0.8)
    .add(new THREE.Vector3(0, -radius * 0.3, 0));
  const controls = new OrbitControls(camera, canvas);
  controls.target.copy(center);
  controls.update();
  let running = true;
  const draw = () => {
    if (!running) return;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.floor(w * window.devicePixelRatio)) {
      renderer.setSize(w, h, false);
      camera.aspect = w / h;
      camera.updateProjectionMatrix();
    }
    controls.update();
    renderer.render(scene, camera);
    document.body.dataset.ready = "window";
    requestAnimationFrame(draw);
  };
  draw();
  return () => { running = false; controls.dispose(); renderer.dispose(); };
}

function extent(points) {
  // The points' median and a robust radius (90th percentile of the distance to it).
  const n = points.length / 3;
  if (!n) return { center: new THREE.Vector3(), radius: 1 };
  const median = [0, 1, 2].map((k) => {
    const values = [];
    for (let i = k; i < points.length; i += 3) values.push(points[i]);
    values.sort((a, b) => a - b);
    return values[Math.floor(values.length / 2)];
  });
  const center = new THREE.Vector3(...median);
  const distances = [];
  for (let i = 0; i < points.length; i += 3) {
    distances.push(center.distanceTo(new THREE.Vector3(points[i], points[i + 1], points[i + 2])));
  }
  distances.sort((a, b) => a - b);
  return { center, radius: Math.max(distances[Math.floor(0.9 * (n - 1))], 1e-6) };
}

function frustums(cameras, depth) {
  // Each camera as a pyramid: its centre to the corners of its image at ``depth``.
  const positions = [];
  for (const cam of cameras) {
    const c = new THREE.Vector3(...cam.center);
    const m = cam.rotation;  // world-from-camera rotation, rows
    const toWorld = (x, y, z) => new THREE.Vector3(
      c.x + m[0][0] * x + m[0][1] * y + m[0][2] * z,
      c.y + m[1][0] * x + m[1][1] * y + m[1][2] * z,
      c.z + m[2][0] * x + m[2][1] * y + m[2][2] * z);
    const hx = (cam.width / 2 / cam.fx) * depth, hy = (cam.height / 2 / cam.fy) * depth;
    const corners = [[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]]
      .map(([x, y]) => toWorld(x, y, depth));
    for (let i = 0; i < 4; i++) {
      positions.push(...c.toArray(), ...corners[i].toArray());
      positions.push(...corners[i].toArray(), ...corners[(i + 1) % 4].toArray());
    }
  }
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute("position", new THREE.Float32BufferAttribute(positions, 3));
  return new THREE.LineSegments(geometry, new THREE.LineBasicMaterial({ color: 0xff7a45 }));
}

// ---- routing ------------------------------------------------------------------------------
async function route() {
  stopCurrent();
  stopCurrent = () => {};
  delete document.body.dataset.ready;
  const hash = decodeURIComponent(location.hash.replace(/^#/, "")) || "/";
  const windowMatch = hash.match(/^\/job\/([^/]+)\/window\/(.+)$/);
  const jobMatch = hash.match(/^\/job\/([^/]+)$/);
  try {
    if (windowMatch) stopCurrent = await windowPage(windowMatch[1], windowMatch[2]);
    else if (jobMatch) stopCurrent = await jobPage(jobMatch[1]);
    else stopCurrent = await jobList();
  } catch (error) {
    main.innerHTML = `<pre>${esc(error.message)}</pre>`;
    document.body.dataset.ready = "error";
  }
}

window.addEventListener("hashchange", route);
showStatus();
setInterval(showStatus, 3000);
route();
