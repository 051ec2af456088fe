// The MELLM gateway's page. Plain DOM, no build step, no libraries; every request goes to this
// gateway (relative URLs), every data request carries the key the user typed in.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const state = { key: "", info: null, folder: "", extra: [], xhr: null, timer: null, reply: null };
const POLL_MS = 500;  // how often a running request's progress is asked for

// Text only ever goes in with textContent: answers and clip names come from elsewhere.
function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.setAttribute("class", v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

const fmt = (v, digits = 2) => (typeof v === "number" ? v.toFixed(digits) : v === null || v === undefined ? "-" : String(v));
const sideWord = (s) => ({ L: "left", R: "right", C: "midline", both: "both" }[s] || s || "-");

function headers() {
  return state.key ? { Authorization: "Bearer " + state.key } : {};
}

// An API error as the API words it: {"error": {"message", "type", "code"}} (or FastAPI's detail).
function apiError(status, text, retryAfter) {
  let message = text, type = "";
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) { message = body.error.message; type = body.error.type || ""; }
    else if (body && body.detail) message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON: show it as it came */ }
  const err = new Error(message || `HTTP ${status}`);
  err.status = status; err.type = type; err.retryAfter = retryAfter;
  return err;
}

async function getJSON(path) {
  let r;
  try { r = await fetch(path, { headers: headers(), cache: "no-store" }); }
  catch (e) { throw Object.assign(new Error("the gateway could not be reached: " + e.message), { status: 0 }); }
  const text = await r.text();
  if (!r.ok) throw apiError(r.status, text, r.headers.get("Retry-After"));
  return JSON.parse(text);
}

function showError(err) {
  const box = $("error");
  box.replaceChildren(
    el("strong", { text: err.status ? `HTTP ${err.status}${err.type ? " (" + err.type + ")" : ""}: ` : "Error: " }),
    el("span", { class: "error-message", text: err.message }),
  );
  if (err.status === 429 && err.retryAfter) box.append(el("span", { text: ` Try again in ${err.retryAfter} s.` }));
  if (err.status === 401) box.append(el("span", { text: " Check the API key above." }));
  box.hidden = false;
  box.focus();
  if (err.status === 401) $("api-key").setAttribute("aria-invalid", "true");
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

// --- connecting -------------------------------------------------------------------------------

async function connect(quiet = false) {
  clearError();
  state.key = $("api-key").value.trim();
  if ($("remember").checked) sessionStorage.setItem("mellm-key", state.key);
  else sessionStorage.removeItem("mellm-key");
  try {
    state.info = await getJSON("v1/me/info");
  } catch (e) {
    state.info = null;
    $("connection").textContent = "Not connected.";
    // On first load the key is not typed in yet: say what to do instead of showing a 401.
    if (quiet && e.status === 401) $("connection").textContent = "Type the gateway's API key and press Connect.";
    else showError(e);
    return;
  }
  $("api-key").removeAttribute("aria-invalid");
  const i = state.info;
  $("connection").textContent = `Connected: model ${i.model}; uploads up to ${i.max_upload_mb} MiB; ` +
    `requests up to ${i.request_timeout_s} s.`;
  $("file").setAttribute("accept", [...i.video_suffixes, ".zip"].join(","));
  $("source-media").disabled = !i.media_root;
  fillQuestions(i.questions);
  if (i.media_root) browse("");
}

function fillQuestions(q) {
  const box = $("fixed-questions");
  box.replaceChildren();
  for (const f of q.fixed) {
    const on = f.qtype === "analysis" || f.qtype === "coarse";
    box.append(el("label", { class: "check" },
      el("input", { type: "checkbox", value: f.text, "data-qtype": f.qtype, checked: on }), " " + f.text));
  }
  $("au-qtype").replaceChildren(...q.per_au.map((p) => el("option", { value: p.template, text: p.template.replace("{au}", "…") })));
  $("au-pick").replaceChildren(...q.aus.map((a) => el("option", { value: a.name, text: `AU${a.au} ${a.name}` })));
  $("video-questions").replaceChildren(...q.long.map((f) => el("label", { class: "check" },
    el("input", { type: "checkbox", value: f.text, "data-qtype": f.qtype, checked: true }), " " + f.text)));
  $("event-question-text").textContent = q.event;
}

const mode = () => document.querySelector("input[name=mode]:checked").value;

function showMode() {
  const long = mode() === "long";
  $("frames-box").hidden = long;
  $("short-questions").hidden = long;
  $("long-questions").hidden = !long;
  $("fps-box").hidden = !long;
}

function renderExtra() {
  $("extra-questions").replaceChildren(...state.extra.map((q, i) => el("li", {},
    el("span", { text: q }), " ",
    el("button", { type: "button", "aria-label": "remove: " + q, text: "remove",
      onclick: () => { state.extra.splice(i, 1); renderExtra(); } }))));
}

// --- the media root ---------------------------------------------------------------------------

async function browse(folder) {
  let listing;
  try { listing = await getJSON("v1/me/media?folder=" + encodeURIComponent(folder)); }
  catch (e) { showError(e); return; }
  state.folder = listing.folder;
  $("media-where").textContent = "Folder: /" + listing.folder + (listing.truncated ? " (first entries only)" : "");
  const items = [];
  if (listing.folder) {
    const up = listing.folder.split("/").slice(0, -1).join("/");
    items.push(el("li", {}, el("button", { type: "button", class: "link", text: "⬆ up one folder", onclick: () => browse(up) })));
  }
  for (const e of listing.entries) {
    const label = { folder: "📁 folder", frames: "🖼 frames", video: "🎞 video" }[e.kind];
    const pick = () => { $("media-path").value = e.path; $("media-path").focus(); };
    items.push(el("li", {},
      el("button", { type: "button", class: "link", onclick: e.kind === "folder" ? () => browse(e.path) : pick,
        "aria-label": (e.kind === "folder" ? "open folder " : "choose clip ") + e.name },
        el("span", { class: "kind", text: label }), " " + e.name)));
  }
  if (!listing.entries.length) items.push(el("li", { class: "muted", text: "(nothing here)" }));
  $("media-list").replaceChildren(...items);
}

// --- asking -----------------------------------------------------------------------------------

function questions() {
  const box = mode() === "long" ? $("video-questions") : $("fixed-questions");
  const chosen = [...box.querySelectorAll("input:checked")].map((c) => c.value);
  const free = $("free-questions").value.split("\n").map((s) => s.trim()).filter(Boolean);
  return mode() === "long" ? [...chosen, ...free] : [...chosen, ...state.extra, ...free];
}

// A name for the request, to follow it at v1/me/progress/ID (crypto.randomUUID needs a secure context).
function requestId() {
  return [...crypto.getRandomValues(new Uint8Array(12))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function formData(id) {
  const fd = new FormData();
  const source = document.querySelector("input[name=source]:checked").value;
  if (source === "upload") {
    const f = $("file").files[0];
    if (!f) throw Object.assign(new Error("choose a video file or a .zip of frames to upload"), { status: 0 });
    fd.append("file", f, f.name);
  } else {
    const p = $("media-path").value.trim();
    if (!p) throw Object.assign(new Error("choose a clip under the media root"), { status: 0 });
    fd.append("path", p);
  }
  if (mode() === "short") {
    for (const k of ["onset", "apex", "offset"]) if ($(k).value.trim()) fd.append(k, $(k).value.trim());
  } else {
    if ($("ask-events").checked) fd.append("event_question", state.info.questions.event);
    if ($("fps").value.trim()) fd.append("fps", $("fps").value.trim());
  }
  for (const q of questions()) fd.append("question", q);
  fd.append("views", "true");
  fd.append("request_id", id);
  return fd;
}

function progress(text, value) {
  $("status").hidden = false;
  $("status-text").textContent = text;
  if (value === null) $("progress").removeAttribute("value");
  else $("progress").value = value;
}

const STAGES = { receiving: "Receiving the clip", perception: "Perception is working", spotting: "Spotting expressions",
  evidence: "Looking at each spotted event", model: "The model is answering" };

function describeProgress(p) {
  const stage = STAGES[p.stage] || p.stage;
  if (p.stage === "spotting" && p.done !== null) {
    return [`${stage}: frame ${p.done}` + (p.total ? ` of ${p.total}` : ""), p.total ? 100 * p.done / p.total : null];
  }
  if (p.stage === "evidence" && p.done !== null) return [`${stage}: ${p.done + 1} of ${p.total}`, 100 * p.done / p.total];
  return [stage, null];
}

// While the request runs, ask the gateway how far it has got; until it knows the request, say so.
function followProgress(id, elapsed) {
  let last = ["Waiting for the gateway", null], busy = false;
  const tick = async () => {
    progress(`${last[0]}… ${elapsed()}`, last[1]);
    if (busy) return;
    busy = true;
    try {
      const p = await getJSON("v1/me/progress/" + id);
      last = describeProgress(p);
      progress(`${last[0]}… ${elapsed()}`, last[1]);
    } catch (_) { /* not started yet, or just finished: the next tick or the reply tells */ }
    busy = false;
  };
  tick();
  state.timer = setInterval(tick, POLL_MS);
}

function analyse(event) {
  event.preventDefault();
  clearError();
  const id = requestId();
  let fd;
  try { fd = formData(id); } catch (e) { showError(e); return; }
  const xhr = new XMLHttpRequest();
  state.xhr = xhr;
  const started = performance.now();
  const elapsed = () => ((performance.now() - started) / 1000).toFixed(0) + " s";
  $("analyse").disabled = true;
  $("cancel").hidden = false;
  progress("Sending the clip…", 0);
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) progress(`Sending the clip… ${Math.round(100 * e.loaded / e.total)}%`, 100 * e.loaded / e.total); };
  xhr.upload.onload = () => { if (!state.timer) followProgress(id, elapsed); };
  const done = () => {
    clearInterval(state.timer);
    state.timer = null;
    state.xhr = null;
    $("analyse").disabled = false;
    $("cancel").hidden = true;
    $("status").hidden = true;
  };
  xhr.onload = () => {
    done();
    if (xhr.status !== 200) { showError(apiError(xhr.status, xhr.responseText, xhr.getResponseHeader("Retry-After"))); return; }
    let reply;
    try { reply = JSON.parse(xhr.responseText); } catch (e) { showError(new Error("the gateway's reply is not JSON")); return; }
    if (Array.isArray(reply.events)) renderLong(reply, elapsed());
    else render(reply, elapsed());
  };
  xhr.onerror = () => { done(); showError(Object.assign(new Error("the gateway could not be reached"), { status: 0 })); };
  xhr.onabort = () => { done(); progress("Cancelled.", 0); $("status").hidden = false; };
  xhr.open("POST", mode() === "long" ? "v1/me/analyze_long" : "v1/me/analyze");
  for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
  xhr.send(fd);
  // A path under the media root has (almost) nothing to upload: follow the request at once.
  if (!fd.has("file")) followProgress(id, elapsed);
}

// --- showing ----------------------------------------------------------------------------------

const dd = (k, v) => [el("dt", { text: k }), el("dd", { text: v })];
const auList = (aus) => (aus.length ? aus.map((a) => `AU${a.au} ${a.name} (${sideWord(a.side)})`).join(", ") : "none");

function render(reply, took) {
  state.reply = reply;
  const ev = reply.evidence;
  $("r-clip").textContent = reply.clip;
  $("summary").replaceChildren(
    ...dd("model", reply.model),
    ...dd("frames", `${ev.n_frames}` + (ev.fps ? ` at ${fmt(ev.fps, 0)} fps` : "")),
    ...dd("onset", String(ev.onset_frame)),
    ...dd("apex", `${ev.apex_frame} (${ev.apex_source})`),
    ...dd("offset", ev.offset_frame === null ? "not given" : String(ev.offset_frame)),
    ...dd("flow", ev.flow_method),
    ...dd("head motion", `${fmt(ev.head_motion && ev.head_motion.mean_px)} px removed`),
    ...dd("AUs found", auList(ev.aus)),
    ...dd("took", took),
  );
  $("long-box").hidden = true;
  $("clip-box").hidden = false;
  $("short-curve-box").hidden = false;
  $("answers-h").textContent = "Answers";
  renderClip(ev, reply.views, reply.answers, reply.errors);
  renderCurve(ev);
  renderTimings(reply.timings_ms, ev.timings_ms);
  $("results").hidden = false;
  $("results").focus();
}

// One clip's evidence: a short clip's, or one spotted event's in a long video.
function renderClip(ev, views, answers, errors) {
  renderImages(views, ev);
  renderAnswers($("answers"), answers, errors);
  renderAUs(ev);
  renderRegions(ev);
  $("description").textContent = ev.description;
}

// --- long videos: the motion curve with the spotted events as a timeline --------------------------

const eventName = (e, k) => `event ${k + 1}: ${e.type}, frames ${e.onset}-${e.offset} (apex ${e.apex})`;

function renderLong(reply, took) {
  state.reply = reply;
  $("r-clip").textContent = reply.clip;
  const micro = reply.events.filter((e) => e.type === "micro").length;
  $("summary").replaceChildren(
    ...dd("model", reply.model),
    ...dd("frames", `${reply.n_frames} at ${fmt(reply.fps, 0)} fps (${fmt(reply.n_frames / reply.fps, 1)} s)`),
    ...dd("events spotted", `${reply.events.length}: ${micro} micro, ${reply.events.length - micro} macro`),
    ...dd("face missing", reply.face_gaps.length ? reply.face_gaps.map(([a, b]) => `frames ${a}-${b}`).join(", ") : "never"),
    ...dd("took", took),
  );
  $("long-box").hidden = false;
  $("short-curve-box").hidden = true;
  renderLongCurve(reply);
  $("timeline").replaceChildren(...reply.events.map((e, k) => el("li", {},
    el("button", { type: "button", class: "event-button " + e.type, "aria-pressed": "false", "data-event": k,
      onclick: () => selectEvent(k) },
    el("span", { class: "event-kind", text: e.type === "micro" ? "micro" : "MACRO" }),
    ` ${k + 1}: frames ${e.onset}-${e.offset}` + (e.aus.length ? ` · AU${e.aus.join(", AU")}` : "")))));
  const baseline = Object.fromEntries(reply.baseline.map((b) => [b.question, b.answer]));
  renderAnswers($("video-answers"), reply.answers, reply.errors, baseline);
  $("long-notes").replaceChildren(...reply.notes.map((n) => el("li", { text: n })));
  renderTimings(reply.timings_ms, {});
  $("results").hidden = false;
  if (reply.events.length) selectEvent(0, false);
  else {
    $("event-h").textContent = "No expression event was spotted in this video.";
    $("clip-box").hidden = true;
  }
  $("results").focus();
}

function selectEvent(k, focus = true) {
  const reply = state.reply, e = reply.events[k];
  for (const b of $("timeline").querySelectorAll("button")) b.setAttribute("aria-pressed", String(Number(b.dataset.event) === k));
  for (const r of $("long-curve").querySelectorAll("rect.event")) r.classList.toggle("selected", Number(r.dataset.event) === k);
  $("event-h").textContent = `Event ${k + 1} of ${reply.events.length}: ${e.type}, frames ${e.onset}-${e.offset}, ` +
    `apex ${e.apex} (${fmt((e.offset - e.onset + 1) / reply.fps, 2)} s)`;
  $("answers-h").textContent = `Answers about event ${k + 1}`;
  if (!e.evidence) {
    $("clip-box").hidden = true;
    $("event-h").textContent += ": no evidence (see the notes above)";
  } else {
    $("clip-box").hidden = false;
    renderClip(e.evidence, e.views, e.answers, e.errors);
    if (!e.answers.length && !e.errors.length) {
      $("answers").replaceChildren(el("p", { class: "muted", text: "This event was not asked a question of its own." }));
    }
  }
  if (focus) $("event-h").focus();
}

function renderLongCurve(reply) {
  const svg = $("long-curve");
  svg.replaceChildren();
  const W = 960, H = 210, L = 44, R = 10, T = 26, B = 30;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const c = reply.curve, n = Math.max(reply.n_frames, 2);
  const values = c ? c.score.filter((v) => v !== null) : [];
  const top = Math.max(...values, c ? c.z_high * 1.2 : 1, 1);
  const x = (f) => L + (W - L - R) * (f - 1) / (n - 1), y = (z) => H - B - (H - T - B) * Math.max(0, Math.min(z, top)) / top;
  const sec = (f) => fmt((f - 1) / reply.fps, 1) + " s";
  svg.append(el("svg:defs", {}, el("svg:pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse",
    patternTransform: "rotate(45)" }, el("svg:line", { x1: 0, y1: 0, x2: 0, y2: 6, class: "hatch" }))));
  for (const [a, b] of reply.face_gaps) {
    svg.append(el("svg:rect", { x: x(a), y: T, width: Math.max(1, x(b) - x(a)), height: H - T - B, class: "gap" },
      el("svg:title", { text: `no face, frames ${a}-${b}` })));
  }
  reply.events.forEach((e, k) => {
    const r = el("svg:rect", { x: x(e.onset), y: T, width: Math.max(3, x(e.offset) - x(e.onset)), height: H - T - B,
      class: "event " + e.type, tabindex: "0", role: "button", "data-event": k, "aria-label": eventName(e, k),
      onclick: () => selectEvent(k),
      onkeydown: (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); selectEvent(k); } } },
    el("svg:title", { text: eventName(e, k) }));
    svg.append(r, el("svg:text", { x: x(e.onset), y: T - 6, class: "tick", text: `${k + 1}${e.type === "micro" ? "" : " M"}` }));
  });
  svg.append(el("svg:line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    el("svg:line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }),
    el("svg:text", { x: L - 4, y: T + 4, class: "tick end", text: fmt(top, 0) }),
    el("svg:text", { x: L - 4, y: H - B, class: "tick end", text: "0" }),
    el("svg:text", { x: L, y: H - 8, class: "tick", text: "0 s" }),
    el("svg:text", { x: W - R, y: H - 8, class: "tick end", text: sec(n) }));
  if (c) {
    for (const [z, cls, name] of [[c.z_high, "level-high", "peak level"], [c.z_low, "level-low", "extent level"]]) {
      svg.append(el("svg:line", { x1: L, y1: y(z), x2: W - R, y2: y(z), class: "level " + cls },
        el("svg:title", { text: `${name}: ${fmt(z, 1)}` })));
    }
    let run = [];
    const flush = () => { if (run.length > 1) svg.append(el("svg:polyline", { points: run.join(" "), class: "trace" })); run = []; };
    c.frames.forEach((f, i) => { if (c.score[i] === null) flush(); else run.push(`${x(f)},${y(c.score[i])}`); });
    flush();
  }
  const micro = reply.events.filter((e) => e.type === "micro").length;
  $("long-curve-cap").textContent = (c ? `Motion score over the video (noise units over rest; ${c.frames_per_point > 1 ?
    "each point the highest of " + c.frames_per_point + " frames" : "every analysed frame"}). Dashed line: the level an ` +
    "event's peak must reach; dotted: where it ends. " : "No motion curve in this reply. ") +
    `${reply.events.length} events: ${micro} micro (filled boxes), ${reply.events.length - micro} macro (hatched, marked M); ` +
    "grey: no face.";
}

function renderImages(views, ev) {
  const im = (views && views.images) || {};
  const set = (id, role, alt) => { $(id).src = im[role] || ""; $(id).alt = im[role] ? alt : alt + " (not returned)"; };
  set("img-onset", "onset", `Onset frame ${ev.onset_frame}, face crop`);
  set("img-apex", "apex", `Apex frame ${ev.apex_frame}, face crop`);
  set("img-flow", "flow", "Optical flow colour map from onset to apex, with its legend");
  set("img-magnitude", "magnitude", "Flow magnitude over the onset face, with its legend");
  $("cap-onset").textContent = `Onset frame ${ev.onset_frame}`;
  $("cap-apex").textContent = `Apex frame ${ev.apex_frame} (${ev.apex_source})`;
  const svg = $("region-svg");
  svg.replaceChildren();
  if (!views) return;
  const stats = Object.fromEntries(ev.regions.map((r) => [r.name + "|" + r.side, r]));
  const draw = () => {
    const img = $("img-magnitude");
    svg.setAttribute("viewBox", `0 0 ${img.naturalWidth || views.crop_size} ${img.naturalHeight || views.crop_size}`);
  };
  $("img-magnitude").onload = draw;
  draw();
  for (const r of views.regions) {
    const s = stats[r.key];
    const c = el("svg:circle", { cx: r.x, cy: r.y, r: r.r, "data-key": r.key,
      class: "region" + (s && s.significant ? " significant" : "") });
    c.append(el("svg:title", { text: `${r.name} (${sideWord(r.side)}): ${s ? fmt(s.mean_px) + " px" : "-"}` }));
    svg.append(c);
  }
  svg.classList.toggle("hidden", !$("show-regions").checked);
}

function renderCurve(ev) {
  const svg = $("curve");
  svg.replaceChildren();
  const W = 640, H = 180, L = 44, R = 10, T = 18, B = 30;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const curve = ev.motion_curve;
  if (!curve || !curve.frames.length) {
    $("curve-cap").textContent = "No motion curve in this reply.";
    return;
  }
  const frames = [ev.onset_frame, ...curve.frames], mags = [0, ...curve.magnitude];
  const f0 = frames[0], f1 = Math.max(frames[frames.length - 1], f0 + 1), top = Math.max(...mags, 1e-6);
  const x = (f) => L + (W - L - R) * (f - f0) / (f1 - f0), y = (m) => H - B - (H - T - B) * m / top;
  svg.append(el("svg:line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    el("svg:line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }),
    el("svg:text", { x: L - 4, y: T + 4, class: "tick end", text: fmt(top) }),
    el("svg:text", { x: L - 4, y: H - B, class: "tick end", text: "0" }),
    el("svg:text", { x: L, y: H - 8, class: "tick", text: `frame ${f0}` }),
    el("svg:text", { x: W - R, y: H - 8, class: "tick end", text: `frame ${f1}` }),
    el("svg:polyline", { points: frames.map((f, i) => `${x(f)},${y(mags[i])}`).join(" "), class: "trace" }));
  const marks = [["onset", ev.onset_frame, "m-onset"], ["apex", ev.apex_frame, "m-apex"]];
  if (ev.offset_frame !== null && ev.offset_frame !== undefined) marks.push(["offset", ev.offset_frame, "m-offset"]);
  for (const [name, f, cls] of marks) {
    svg.append(el("svg:line", { x1: x(f), y1: T, x2: x(f), y2: H - B, class: "mark " + cls }),
      el("svg:text", { x: x(f) + 3, y: T - 4, class: "tick", text: `${name} ${f}` }));
  }
  const peak = curve.frames[curve.magnitude.indexOf(Math.max(...curve.magnitude))];
  $("curve-cap").textContent = `Motion against the onset frame, frames ${f0}-${f1}; strongest at frame ${peak} ` +
    `(${fmt(Math.max(...curve.magnitude))} px). Onset: dashed line, apex: solid, offset: dotted.`;
}

// Answers with the AUs each claims, supported by the evidence or not; beside each, the model-free
// answer (`baseline`: {question: answer}) where there is one.
function renderAnswers(box, answers, errors, baseline = {}) {
  box.replaceChildren();
  for (const a of answers) {
    const claims = (a.claims || []).map((c) => el("li", { class: c.supported ? "ok" : "bad" },
      el("span", { class: "mark-icon", "aria-hidden": "true", text: c.supported ? "✓" : "✗" }),
      ` AU${c.au} ${c.name}: ` + (c.supported ? "supported by the evidence" : "not supported by the evidence") +
      (c.score === null ? " (not scored by perception)" : ` (score ${fmt(c.score)}${c.side ? ", " + sideWord(c.side) : ""})`)));
    const p = a.parsed || {};
    const labels = [p.coarse && "coarse: " + p.coarse, p.fine && "fine: " + p.fine,
      p.yes_no !== null && p.yes_no !== undefined && "yes/no: " + (p.yes_no ? "yes" : "no"), p.side && "side: " + p.side]
      .filter(Boolean).join("; ");
    box.append(el("article", { class: "answer card" },
      el("h4", { text: a.question }),
      el("p", { class: "muted", text: `type ${a.qtype}` + (labels ? ` · read as ${labels}` : "") +
        (p.parsed === false && p.problem ? ` · not read: ${p.problem}` : "") }),
      el("blockquote", { text: a.answer.trim() ? a.answer : "(no text: the model's answer is empty or only white space)" }),
      a.question in baseline ? el("p", { class: "baseline" }, el("span", { class: "muted", text: "From the event list alone: " }),
        el("span", { text: baseline[a.question] })) : null,
      claims.length ? el("ul", { class: "claims", "aria-label": "AUs the answer names" }, ...claims) : null));
  }
  const asked = new Set([...answers, ...(errors || [])].map((a) => a.question));
  for (const [q, text] of Object.entries(baseline)) {
    if (asked.has(q)) continue;
    box.append(el("article", { class: "answer card" }, el("h4", { text: q }),
      el("p", { class: "muted", text: "The model was not asked (no event was spotted)." }),
      el("p", { class: "baseline" }, el("span", { class: "muted", text: "From the event list alone: " }), el("span", { text }))));
  }
  for (const e of errors || []) {
    box.append(el("article", { class: "answer card error" }, el("h4", { text: e.question }),
      el("p", { text: `HTTP ${e.status}: ${e.message}` })));
  }
}

function renderAUs(ev) {
  const present = new Set(ev.aus.map((a) => a.au));
  $("au-table").tBodies[0].replaceChildren(...(ev.au_scores || ev.aus).map((a) => el("tr", { class: present.has(a.au) ? "present" : "" },
    el("th", { scope: "row", text: "AU" + a.au }), el("td", { text: a.name }), el("td", { class: "num", text: fmt(a.score) }),
    el("td", { text: sideWord(a.side) }), el("td", { class: "num", text: fmt(a.amplitude_px) }),
    el("td", { text: present.has(a.au) ? "✓ yes" : "no" }))));
}

function highlight(key, on) {
  const c = $("region-svg").querySelector(`circle[data-key="${CSS.escape(key)}"]`);
  if (c) c.classList.toggle("hl", on);
}

function renderRegions(ev) {
  const rows = [...ev.regions].sort((a, b) => b.mean_px - a.mean_px).map((r) => {
    const key = r.name + "|" + r.side;
    const dir = r.octant === "none" ? "no significant motion" : r.octant === "mixed" ? "no clear direction" :
      `${r.octant} (${fmt(r.direction_deg, 0)}°)`;
    return el("tr", { class: r.significant ? "significant" : "", tabindex: "0", "data-key": key,
      onmouseenter: () => highlight(key, true), onmouseleave: () => highlight(key, false),
      onfocus: () => highlight(key, true), onblur: () => highlight(key, false) },
    el("th", { scope: "row", text: r.name }), el("td", { text: sideWord(r.side) }),
    el("td", { class: "num", text: fmt(r.mean_px) }), el("td", { class: "num", text: fmt(r.max_px) }),
    el("td", { text: dir }), el("td", { text: r.significant ? "✓ yes" : "no" }));
  });
  $("region-table").tBodies[0].replaceChildren(...rows);
}

function renderTimings(request, perception) {
  const rows = [];
  for (const [k, v] of Object.entries(perception || {})) rows.push(["perception: " + k, v]);
  for (const [k, v] of Object.entries(request || {})) rows.push(["request: " + (k === "llm" ? "model" : k), v]);
  $("timings").tBodies[0].replaceChildren(...rows.map(([k, v]) => el("tr", {},
    el("th", { scope: "row", text: k }), el("td", { class: "num", text: fmt(v, 1) }))));
}

// --- wiring -----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (e) => { e.preventDefault(); connect(); });
  $("clip-form").addEventListener("submit", analyse);
  $("cancel").addEventListener("click", () => state.xhr && state.xhr.abort());
  $("show-regions").addEventListener("change", (e) => $("region-svg").classList.toggle("hidden", !e.target.checked));
  $("add-au-question").addEventListener("click", () => {
    state.extra.push($("au-qtype").value.replace("{au}", $("au-pick").value));
    renderExtra();
  });
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", showMode);
  for (const radio of document.querySelectorAll("input[name=source]")) {
    radio.addEventListener("change", () => {
      const media = document.querySelector("input[name=source]:checked").value === "media";
      $("media-box").hidden = !media;
      $("upload-box").hidden = media;
    });
  }
  const saved = sessionStorage.getItem("mellm-key");
  if (saved !== null) { $("api-key").value = saved; $("remember").checked = true; }
  connect(true);
});
