/* tamsoat viewer: slices as raw int16 HU from the server, windowed here in a canvas, with the
 * AI findings drawn on the slices they cover, and the radiologist's decisions.
 * Plain JS, no build step, no outside files. Every text comes from the page's message catalogue. */
(function () {
  "use strict";

  const root = document.getElementById("viewer");
  if (!root) return;
  const UID = root.dataset.study;
  const CSRF = root.dataset.csrf;
  const T = JSON.parse(document.getElementById("viewer-i18n").textContent);
  const X = JSON.parse(document.getElementById("viewer-text").textContent);
  let S = JSON.parse(document.getElementById("viewer-state").textContent);

  const PRESETS = { lung: { w: 1500, c: -600 }, mediastinum: { w: 350, c: 50 } };
  const CACHE_LIMIT = 400;
  const $ = (id) => document.getElementById(id);
  const canvas = $("image");
  const ctx = canvas.getContext("2d");
  const wrap = $("canvas-wrap");

  const series = S.series;
  const rows = series ? series.rows : 0;
  const cols = series ? series.columns : 0;
  const rs = series ? series.row_spacing_mm : 1;
  const cs = series ? series.col_spacing_mm : 1;
  const positions = series ? series.slice_positions_mm : [];
  const nSlices = series ? series.count : 0;

  const view = {
    k: Math.floor(nSlices / 2), w: PRESETS.lung.w, c: PRESETS.lung.c, zoom: 1, panX: 0, panY: 0,
    sel: -1, mode: "normal", pending: null,
  };
  const stats = { last_ms: null, samples: [], fetches: 0, renders: 0 };
  window.__viewer = { view, stats, state: () => S, go: (k) => goTo(k) };

  // --- slices ----------------------------------------------------------------------------------
  const cache = new Map();
  const inflight = new Map();
  const prefetching = new Map(); // index -> AbortController, for background fetches only
  let generation = 0; // bumped when the reader jumps to a slice not loaded: stale prefetches stop

  function fetchSlice(i, background) {
    if (cache.has(i)) return Promise.resolve(cache.get(i));
    if (inflight.has(i)) return inflight.get(i);
    const ctl = background ? new AbortController() : null;
    if (ctl) prefetching.set(i, ctl);
    const p = fetch(`/studies/${encodeURIComponent(UID)}/slices/${i}`,
      { credentials: "same-origin", signal: ctl ? ctl.signal : undefined })
      .then((r) => {
        if (!r.ok) throw new Error(`slice ${i}: HTTP ${r.status}`);
        return r.arrayBuffer();
      })
      .then((buf) => {
        const px = new Int16Array(buf);
        cache.set(i, px);
        stats.fetches += 1;
        if (cache.size > CACHE_LIMIT) {
          let far = null, farD = -1;
          for (const key of cache.keys()) {
            const d = Math.abs(key - view.k);
            if (d > farD) { far = key; farD = d; }
          }
          cache.delete(far);
        }
        return px;
      })
      .finally(() => { inflight.delete(i); prefetching.delete(i); });
    inflight.set(i, p);
    return p;
  }

  function cancelPrefetch(keep) {
    generation += 1;
    for (const [i, ctl] of prefetching) {
      if (i !== keep) { ctl.abort(); prefetching.delete(i); inflight.delete(i); }
    }
  }

  let prefetchTimer = null;
  function prefetch() {
    clearTimeout(prefetchTimer);
    const gen = generation;
    prefetchTimer = setTimeout(async () => {
      const around = [];
      for (let d = 1; d <= 24; d++) {
        if (view.k + d < nSlices) around.push(view.k + d);
        if (view.k - d >= 0) around.push(view.k - d);
      }
      const todo = around.filter((i) => !cache.has(i));
      for (let j = 0; j < todo.length && gen === generation; j += 3) {
        await Promise.all(todo.slice(j, j + 3).map((i) => fetchSlice(i, true).catch(() => null)));
      }
    }, 30);
  }

  // --- windowing -------------------------------------------------------------------------------
  const lut = new Uint8ClampedArray(65536);
  let lutKey = "";
  function buildLut() {
    const key = `${view.w}|${view.c}`;
    if (key === lutKey) return;
    const lo = view.c - view.w / 2;
    const scale = 255 / Math.max(view.w, 1);
    for (let v = 0; v < 65536; v++) lut[v] = (v - 32768 - lo) * scale;
    lutKey = key;
  }

  const off = document.createElement("canvas");
  off.width = cols; off.height = rows;
  const offCtx = off.getContext("2d");
  const imageData = cols ? offCtx.createImageData(cols, rows) : null;
  const out32 = imageData ? new Uint32Array(imageData.data.buffer) : null;
  let paintedKey = "";

  function paintSlice(px) {
    buildLut();
    const n = px.length;
    for (let i = 0; i < n; i++) {
      const g = lut[px[i] + 32768];
      out32[i] = 0xff000000 | (g << 16) | (g << 8) | g;
    }
    offCtx.putImageData(imageData, 0, 0);
  }

  // --- geometry on screen ----------------------------------------------------------------------
  function layout() {
    const dpr = window.devicePixelRatio || 1;
    const W = wrap.clientWidth, H = wrap.clientHeight;
    if (canvas.width !== Math.round(W * dpr) || canvas.height !== Math.round(H * dpr)) {
      canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
      canvas.style.width = W + "px"; canvas.style.height = H + "px";
    }
    const fit = Math.min(W / (cols * cs), H / (rows * rs)) * 0.98;
    const s = fit * view.zoom; // screen px per mm
    const ox = (W - cols * cs * s) / 2 + view.panX;
    const oy = (H - rows * rs * s) / 2 + view.panY;
    return { dpr, W, H, s, ox, oy };
  }

  function toScreen(L, col, row) { return [L.ox + col * cs * L.s, L.oy + row * rs * L.s]; }
  function toImage(L, x, y) { return [(x - L.ox) / (cs * L.s), (y - L.oy) / (rs * L.s)]; }

  // --- drawing ---------------------------------------------------------------------------------
  let drawToken = 0;
  function render() {
    if (!series) return;
    const t0 = performance.now();
    const token = ++drawToken;
    const k = view.k;
    const px = cache.get(k);
    if (!px) {
      cancelPrefetch(k);
      drawFrame(null);
      fetchSlice(k).then(() => { if (token === drawToken) finish(t0); }).catch((e) => setStatus(e.message, true));
      return;
    }
    finish(t0);
  }

  function finish(t0) {
    const k = view.k;
    const key = `${k}|${view.w}|${view.c}`;
    if (key !== paintedKey) { paintSlice(cache.get(k)); paintedKey = key; }
    drawFrame(off);
    const ms = performance.now() - t0;
    stats.last_ms = ms; stats.renders += 1;
    stats.samples.push(ms); if (stats.samples.length > 500) stats.samples.shift();
    canvas.dataset.slice = String(k);
    canvas.dataset.renderedMs = ms.toFixed(2);
    prefetch();
  }

  function drawFrame(img) {
    const L = layout();
    ctx.setTransform(L.dpr, 0, 0, L.dpr, 0, 0);
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, L.W, L.H);
    if (img) {
      ctx.imageSmoothingEnabled = view.zoom < 2.5;
      ctx.drawImage(img, L.ox, L.oy, cols * cs * L.s, rows * rs * L.s);
    } else {
      ctx.fillStyle = "#8a94a6"; ctx.font = "14px system-ui, sans-serif";
      ctx.fillText(T.loading, 16, 24);
    }
    drawFindings(L);
    if (view.pending) drawCross(L, view.pending.column, view.pending.row, "#38bdf8");
    readouts();
  }

  function findingColor(f) {
    if (f.source === "radiologist") return "#38bdf8";
    if (f.decision === "reject") return "#f87171";
    if (f.decision === "accept") return "#4ade80";
    return "#fbbf24";
  }

  function nearestSlice(f) { return Math.min(nSlices - 1, Math.max(0, Math.round(f.slice))); }

  function coverage(f) {
    const R = f.diameter_mm / 2;
    let a = null, b = null;
    positions.forEach((p, i) => {
      if (Math.abs(p - f.normal_mm) <= R) { if (a === null) a = i; b = i; }
    });
    if (a === null) { a = b = nearestSlice(f); }
    return [a, b];
  }

  function drawFindings(L) {
    S.findings.forEach((f, idx) => {
      const R = f.diameter_mm / 2;
      const d = positions[view.k] - f.normal_mm;
      let r = Math.abs(d) <= R ? Math.sqrt(R * R - d * d) : null;
      const onNearest = nearestSlice(f) === view.k;
      if (r === null && !onNearest) return;
      const dashed = r === null || f.decision === "reject";
      if (r === null || r < 0.75) r = Math.max(R * 0.5, 1.5);
      const [x, y] = toScreen(L, f.column, f.row);
      const selected = idx === view.sel;
      ctx.save();
      ctx.strokeStyle = findingColor(f);
      ctx.lineWidth = selected ? 2.5 : 1.5;
      if (dashed) ctx.setLineDash([5, 4]);
      ctx.beginPath();
      ctx.ellipse(x, y, r * L.s, r * L.s, 0, 0, Math.PI * 2);
      ctx.stroke();
      ctx.setLineDash([]);
      if (selected) {
        const h = R * L.s + 6;
        ctx.lineWidth = 1; ctx.globalAlpha = 0.7;
        ctx.strokeRect(x - h, y - h, 2 * h, 2 * h);
        ctx.globalAlpha = 1;
      }
      ctx.font = `${selected ? "bold " : ""}12px system-ui, sans-serif`;
      ctx.fillStyle = findingColor(f);
      ctx.fillText(`N${idx + 1}`, x + R * L.s + 6, y - R * L.s * 0.6);
      ctx.restore();
    });
  }

  function drawCross(L, col, row, color) {
    const [x, y] = toScreen(L, col, row);
    ctx.save(); ctx.strokeStyle = color; ctx.lineWidth = 1.5;
    ctx.beginPath(); ctx.moveTo(x - 10, y); ctx.lineTo(x + 10, y); ctx.moveTo(x, y - 10); ctx.lineTo(x, y + 10);
    ctx.stroke(); ctx.restore();
  }

  function readouts() {
    $("ov-tl").textContent = $("patient-name").textContent;
    $("ov-tr").textContent = `${T.slice} ${view.k + 1}/${nSlices} · ${positions[view.k].toFixed(1)} mm`;
    $("ov-bl").textContent = `${T.window} ${Math.round(view.w)} / ${Math.round(view.c)}`;
    $("ov-br").textContent = `${T.zoom} ${view.zoom.toFixed(1)}×`;
    $("readout").textContent = `${view.k + 1} / ${nSlices}`;
    $("slice-slider").value = String(view.k);
  }

  // --- navigation ------------------------------------------------------------------------------
  function goTo(k) {
    const next = Math.max(0, Math.min(nSlices - 1, k));
    if (next === view.k && cache.has(next)) return;
    view.k = next;
    render();
  }

  function select(idx, jump) {
    if (!S.findings.length) return;
    view.sel = (idx + S.findings.length) % S.findings.length;
    if (jump) view.k = nearestSlice(S.findings[view.sel]);
    renderSide();
    render();
    const li = $("findings").children[view.sel];
    if (li) li.scrollIntoView({ block: "nearest" });
  }

  function setWindow(w, c) { view.w = Math.max(1, w); view.c = c; render(); }

  // --- server calls ----------------------------------------------------------------------------
  async function post(path, body) {
    setStatus("", false);
    const r = await fetch(`/studies/${encodeURIComponent(UID)}${path}`, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
      body: JSON.stringify(body || {}),
    });
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      setStatus(T.error.replace("{message}", (data && data.message) || `HTTP ${r.status}`), true);
      throw new Error((data && data.code) || "error");
    }
    S = data;
    renderSide();
    render();
    return data;
  }

  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", !!isError);
  }

  // --- side panel ------------------------------------------------------------------------------
  function typeLabel(t) { return T["type_" + (t || "")] || t; }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function button(label, cls, onClick, id) {
    const b = el("button", cls, label);
    b.type = "button";
    if (id) b.id = id;
    b.addEventListener("click", (ev) => { ev.stopPropagation(); onClick(); });
    return b;
  }

  function renderSide() {
    const list = $("findings");
    list.replaceChildren();
    $("finding-count").textContent = String(S.findings.length);
    if (!S.findings.length) list.appendChild(el("li", "empty", T.none));
    S.findings.forEach((f, idx) => {
      const li = el("li", `finding dec-${f.decision || "none"} src-${f.source}` + (idx === view.sel ? " selected" : ""));
      li.dataset.id = String(f.id);
      li.dataset.index = String(idx);
      const head = el("div", "fhead");
      const dot = el("span", "dot"); dot.style.background = findingColor(f);
      head.append(dot, el("strong", null, `N${idx + 1}`), el("span", "size", `${f.diameter_mm.toFixed(1)} mm`),
        el("span", "lr lr-" + f.lung_rads, f.lung_rads));
      li.appendChild(head);
      const meta = [];
      meta.push(f.source === "radiologist" ? T.added : `${T.ai} · ${T.confidence} ${Math.round(f.confidence * 100)} %`);
      if (f.nodule_type) meta.push(typeLabel(f.nodule_type));
      const [a, b] = coverage(f);
      meta.push(T.slices_range.replace("{a}", a + 1).replace("{b}", b + 1));
      li.appendChild(el("div", "fmeta", meta.join(" · ")));
      let status = f.decision === "accept" ? T.decision_accept : f.decision === "reject" ? T.decision_reject : T.decision_none;
      if (f.edited) status += ` · ${T.edited}`;
      if (f.decided_by) status += ` · ${f.decided_by}`;
      if (f.reason) status += ` · ${f.reason}`;
      li.appendChild(el("div", "fstatus", status));
      if (S.editable) {
        const acts = el("div", "factions");
        if (f.source === "ai") {
          acts.append(button(T.accept, "ok", () => accept(idx), `accept-${f.id}`),
            button(T.reject, "bad", () => openReject(idx), `reject-${f.id}`));
        }
        acts.append(button(T.edit, "", () => openEdit(idx), `edit-${f.id}`));
        if (f.source === "radiologist") acts.append(button(T.remove, "bad", () => removeAdded(idx), `remove-${f.id}`));
        li.appendChild(acts);
      }
      li.addEventListener("click", () => select(idx, true));
      list.appendChild(li);
    });
    renderStudy();
  }

  function renderStudy() {
    const st = S.study;
    const sel = $("lung-rads");
    const keep = sel.value;
    sel.replaceChildren();
    S.categories.forEach((c) => { const o = el("option", null, c); o.value = c; sel.appendChild(o); });
    sel.value = st.lung_rads || (keep && sel.dataset.touched ? keep : st.suggested) || "1";
    sel.disabled = !S.editable;
    $("lung-rads-suggested").textContent = X.suggested.replace("{cat}", st.suggested || "–");
    const undecided = S.findings.filter((f) => !f.decision).length;
    $("progress").textContent = S.editable ? (undecided ? T.undecided_left.replace("{n}", undecided) : T.ready_to_sign) : "";
    document.querySelectorAll(".needs-edit").forEach((b) => { b.disabled = !S.editable; });
    $("sign").disabled = !S.editable || undecided > 0;
    // claim box and banner
    const box = $("claimbox");
    box.replaceChildren();
    const banner = $("banner");
    banner.hidden = true; banner.textContent = "";
    if (st.state === "signed" || st.state === "no_findings") {
      banner.hidden = false; banner.className = "banner done";
      banner.textContent = `${X.states[st.state]} · ` + X.signed_by.replace("{name}", st.signed_by).replace("{time}", st.signed_at);
    } else if (st.state === "rejected") {
      banner.hidden = false; banner.className = "banner bad";
      banner.textContent = X.rejected_by.replace("{name}", st.signed_by).replace("{time}", st.signed_at)
        .replace("{reason}", st.review_note);
    } else if (st.claimed_by && st.claimed_by !== S.me) {
      banner.hidden = false; banner.className = "banner warn";
      banner.textContent = X.readonly_claimed.replace("{name}", st.claimed_by);
      if (S.role === "admin") box.appendChild(button(X.break_claim, "danger-outline", () => post("/claim/break"), "break-claim"));
    } else if (S.role !== "radiologist") {
      banner.hidden = false; banner.className = "banner info"; banner.textContent = X.readonly_role;
    } else if (st.claimed_by === S.me) {
      box.append(el("span", "mine", X.claimed_by_you),
        button(X.release, "link", () => post("/release").then(() => { window.location.href = "/"; }), "release"));
    }
  }

  // --- decisions -------------------------------------------------------------------------------
  function accept(idx) { const f = S.findings[idx]; view.sel = idx; return post(`/findings/${f.id}/accept`).catch(() => null); }

  function removeAdded(idx) { const f = S.findings[idx]; view.sel = -1; return post(`/findings/${f.id}/remove`).catch(() => null); }

  function closeEditor() { const ed = $("editor"); ed.hidden = true; ed.replaceChildren(); view.mode = "normal"; view.pending = null; canvas.classList.remove("crosshair"); render(); }

  function field(label, input) { const l = el("label", null, label); l.appendChild(input); return l; }

  function typeSelect(value) {
    const s = el("select"); s.id = "ed-type";
    S.types.forEach((t) => { const o = el("option", null, typeLabel(t)); o.value = t; s.appendChild(o); });
    s.value = value || "";
    return s;
  }

  function openReject(idx) {
    if (!S.editable) return;
    select(idx, true);
    const f = S.findings[idx];
    const ed = $("editor"); ed.replaceChildren(); ed.hidden = false;
    ed.appendChild(el("h3", null, `${T.reject} N${idx + 1}`));
    const reason = el("select"); reason.id = "ed-reason";
    S.reasons.forEach((r) => { const o = el("option", null, T["reason_" + r] || r); o.value = r; reason.appendChild(o); });
    const text = el("input"); text.id = "ed-reason-text"; text.maxLength = 400; text.placeholder = T.reason_text;
    ed.append(field(T.reason, reason), field(T.reason_text, text));
    const go = () => post(`/findings/${f.id}/reject`, { reason: text.value.trim() ? `${reason.value}: ${text.value.trim()}` : reason.value })
      .then(closeEditor).catch(() => null);
    ed.append(el("div", "row"));
    ed.lastChild.append(button(T.reject, "bad", go, "ed-confirm"), button(T.cancel, "link", closeEditor));
    [reason, text].forEach((i) => i.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); go(); } }));
    reason.focus();
  }

  function openEdit(idx) {
    if (!S.editable) return;
    select(idx, true);
    const f = S.findings[idx];
    view.pending = null;
    const ed = $("editor"); ed.replaceChildren(); ed.hidden = false;
    ed.appendChild(el("h3", null, `${T.edit} N${idx + 1}`));
    const dia = el("input"); dia.id = "ed-diameter"; dia.type = "number"; dia.step = "0.1"; dia.min = "1"; dia.max = "100";
    dia.value = f.diameter_mm.toFixed(1);
    const type = typeSelect(f.nodule_type);
    ed.append(field(T.diameter, dia), field(T.type, type));
    const move = button(T.move_center, "", () => { view.mode = "move"; canvas.classList.add("crosshair"); move.classList.add("active"); }, "ed-move");
    ed.appendChild(move);
    const go = () => {
      const body = { diameter_mm: parseFloat(dia.value), nodule_type: type.value };
      if (view.pending) body.center = view.pending;
      return post(`/findings/${f.id}/edit`, body).then(closeEditor).catch(() => null);
    };
    ed.append(el("div", "row"));
    ed.lastChild.append(button(T.save, "primary", go, "ed-confirm"), button(T.cancel, "link", closeEditor));
    dia.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); go(); } });
    dia.focus(); dia.select();
  }

  function startAdd() {
    if (!S.editable) return;
    view.mode = "add"; view.pending = null;
    canvas.classList.add("crosshair");
    const ed = $("editor"); ed.replaceChildren(); ed.hidden = false;
    ed.append(el("h3", null, T.add_title), el("p", "hint", T.add_hint));
    ed.append(el("div", "row"));
    ed.lastChild.append(button(T.cancel, "link", closeEditor));
    canvas.focus();
  }

  function openAdd(point) {
    view.pending = point; view.mode = "normal";
    const ed = $("editor"); ed.replaceChildren(); ed.hidden = false;
    ed.appendChild(el("h3", null, T.add_title));
    const dia = el("input"); dia.id = "ed-diameter"; dia.type = "number"; dia.step = "0.1"; dia.min = "1"; dia.max = "100"; dia.value = "6.0";
    const type = typeSelect("solid");
    ed.append(field(T.diameter, dia), field(T.type, type));
    const go = () => post("/findings", { center: point, diameter_mm: parseFloat(dia.value), nodule_type: type.value })
      .then(() => { closeEditor(); select(S.findings.length - 1, false); }).catch(() => null);
    ed.append(el("div", "row"));
    ed.lastChild.append(button(T.save, "primary", go, "ed-confirm"), button(T.cancel, "link", closeEditor));
    dia.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); go(); } });
    dia.focus(); dia.select();
    render();
  }

  function confirmBox(text, onYes, yesLabel) {
    const ed = $("editor"); ed.replaceChildren(); ed.hidden = false;
    ed.appendChild(el("p", "confirm", text));
    ed.append(el("div", "row"));
    const yes = button(yesLabel, "primary", () => { closeEditor(); onYes(); }, "confirm-yes");
    ed.lastChild.append(yes, button(T.cancel, "link", closeEditor));
    yes.focus();
  }

  function sign() {
    if (!S.editable || $("sign").disabled) return;
    const cat = $("lung-rads").value;
    confirmBox(T.confirm_sign.replace("{cat}", cat), () =>
      post("/sign", { lung_rads: cat }).then(() => setStatus(T.signed, false)).catch(() => null), T.sign_now);
  }

  function rejectStudy() {
    if (!S.editable) return;
    const ed = $("editor"); ed.replaceChildren(); ed.hidden = false;
    const text = el("input"); text.id = "ed-study-reason"; text.maxLength = 900;
    ed.append(field(T.study_reason, text), el("div", "row"));
    const go = () => post("/reject", { reason: text.value }).then(closeEditor).catch(() => null);
    ed.lastChild.append(button(T.reject, "bad", go, "ed-confirm"), button(T.cancel, "link", closeEditor));
    text.focus();
  }

  // --- input -----------------------------------------------------------------------------------
  let drag = null;
  canvas.addEventListener("mousedown", (e) => {
    canvas.focus();
    drag = { x: e.clientX, y: e.clientY, w: view.w, c: view.c, px: view.panX, py: view.panY,
      pan: e.shiftKey || e.button === 1 || e.button === 2, moved: false };
    e.preventDefault();
  });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    if (!drag.moved) return;
    if (drag.pan) { view.panX = drag.px + dx; view.panY = drag.py + dy; render(); }
    else if (view.mode === "normal") setWindow(drag.w + dx * 4, drag.c + dy * 2);
  });
  window.addEventListener("mouseup", (e) => {
    if (!drag) return;
    const wasClick = !drag.moved;
    drag = null;
    if (!wasClick || (view.mode !== "add" && view.mode !== "move")) return;
    const rect = canvas.getBoundingClientRect();
    const L = layout();
    const [col, row] = toImage(L, e.clientX - rect.left, e.clientY - rect.top);
    if (col < 0 || row < 0 || col > cols - 1 || row > rows - 1) return;
    const point = { slice: view.k, column: Math.round(col * 10) / 10, row: Math.round(row * 10) / 10 };
    if (view.mode === "add") openAdd(point);
    else { view.pending = point; view.mode = "normal"; canvas.classList.remove("crosshair"); const m = $("ed-move"); if (m) m.classList.add("done"); render(); }
  });
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    if (e.ctrlKey || e.metaKey) { view.zoom = Math.min(8, Math.max(0.5, view.zoom * (e.deltaY < 0 ? 1.15 : 1 / 1.15))); render(); }
    else goTo(view.k + (e.deltaY > 0 ? 1 : -1));
  }, { passive: false });
  canvas.addEventListener("dblclick", () => { view.zoom = 1; view.panX = view.panY = 0; render(); });

  document.addEventListener("keydown", (e) => {
    const tag = (e.target && e.target.tagName) || "";
    if (e.key === "Escape") { closeEditor(); return; }
    if (["INPUT", "SELECT", "TEXTAREA"].includes(tag) || e.ctrlKey || e.metaKey || e.altKey) return;
    const f = view.sel >= 0 ? S.findings[view.sel] : null;
    const keys = {
      ArrowDown: () => goTo(view.k + 1), ArrowUp: () => goTo(view.k - 1),
      PageDown: () => goTo(view.k + 10), PageUp: () => goTo(view.k - 10),
      Home: () => goTo(0), End: () => goTo(nSlices - 1),
      j: () => select(view.sel + 1, true), k: () => select(view.sel - 1, true),
      a: () => { if (f && S.editable && f.source === "ai") accept(view.sel).then(() => { const next = S.findings.findIndex((x) => !x.decision); if (next >= 0) select(next, true); }); },
      r: () => { if (f && f.source === "ai") openReject(view.sel); },
      e: () => { if (f) openEdit(view.sel); },
      n: () => startAdd(),
      s: () => sign(),
      1: () => setWindow(PRESETS.lung.w, PRESETS.lung.c),
      2: () => setWindow(PRESETS.mediastinum.w, PRESETS.mediastinum.c),
      "+": () => { view.zoom = Math.min(8, view.zoom * 1.25); render(); },
      "=": () => { view.zoom = Math.min(8, view.zoom * 1.25); render(); },
      "-": () => { view.zoom = Math.max(0.5, view.zoom / 1.25); render(); },
      0: () => { view.zoom = 1; view.panX = view.panY = 0; render(); },
    };
    const fn = keys[e.key];
    if (fn) { e.preventDefault(); fn(); }
  });

  document.querySelectorAll("[data-preset]").forEach((b) => b.addEventListener("click", () => {
    const p = PRESETS[b.dataset.preset]; setWindow(p.w, p.c);
  }));
  $("zoom-reset").addEventListener("click", () => { view.zoom = 1; view.panX = view.panY = 0; render(); });
  $("add-mode").addEventListener("click", startAdd);
  $("sign").addEventListener("click", sign);
  $("reject-study").addEventListener("click", rejectStudy);
  $("lung-rads").addEventListener("change", () => { $("lung-rads").dataset.touched = "1"; });
  const slider = $("slice-slider");
  slider.max = String(Math.max(0, nSlices - 1));
  slider.addEventListener("input", () => goTo(parseInt(slider.value, 10)));
  window.addEventListener("resize", () => render());

  renderSide();
  if (series) {
    if (S.findings.length) select(0, true); else render();
  }
  canvas.focus();
})();
