// LiveView: draws the kernel's live-view messages (lmdm/live/view.py: a header {type: "view", source, block, lufs,
// peak, clipped, nonfinite, repaired, frames, mels, db_min, db_max, seconds, seam_s} and a uint8 (frames, mels) log-mel
// payload) as one scrolling row per source: a mel spectrogram (new blocks enter on the right, low bands at the
// bottom, inferno colours), a thin line and the block number at each block boundary, a per-block LUFS strip under
// it, and a meter for the latest block (LUFS bar and value, clip light that stays lit for a few seconds).
// Concatenated before a widget's own JS (like audio_player.js): top-level definitions, no import/export.
//
//   const view = new LiveView({ rows: ["input", "output"], seconds: 12 });
//   root.append(view.el);
//   model.on("msg:custom", (msg, buffers) => { if (msg.type === "view") view.add(msg, buffers[0]); });
//
// Cost: each block is drawn once (putImageData of its frames x mels image into a small canvas, then drawImage
// scaled into the right edge after shifting the row left by drawImage of the canvas onto itself), in one
// requestAnimationFrame for all blocks that arrived since the last frame; the history is never redrawn.
// root.dataset.blocks counts the blocks taken into the view (each row's element counts its own).

// Perceptual colour map: matplotlib's "inferno" (CC0, van der Walt and Smith) sampled at 17 points, interpolated
// linearly to 256 RGBA entries, one per payload level.
const LMDM_VIEW_LUT = (() => {
  const anchors = ["#000004", "#0b0724", "#210c4a", "#3d0965", "#57106e", "#71196e", "#8a226a", "#a32c61",
    "#bc3754", "#d24644", "#e45a31", "#f1731d", "#f98e09", "#fcac11", "#f9cb35", "#f2ea69", "#fcffa4"];
  const rgb = anchors.map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));
  const bytes = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    const pos = (i / 255) * (anchors.length - 1);
    const k = Math.min(anchors.length - 2, Math.floor(pos));
    const f = pos - k;
    for (let c = 0; c < 3; c++) bytes[4 * i + c] = Math.round(rgb[k][c] * (1 - f) + rgb[k + 1][c] * f);
    bytes[4 * i + 3] = 255;
  }
  return new Uint32Array(bytes.buffer);  // same byte order as ImageData's, whatever the platform's endianness
})();

function lmdmViewLufsText(lufs) {
  // "−19.8 LUFS" with a true minus sign; "– LUFS" for silence or a block too short to measure (lufs null)
  if (lufs === null || lufs === undefined || !Number.isFinite(lufs)) return "– LUFS";
  return `${lufs < 0 ? "\u2212" : ""}${Math.abs(lufs).toFixed(1)} LUFS`;
}

class LiveView {
  // rows: the sources shown, top to bottom ("input", "output"); seconds: history shown; width: canvas pixels;
  // clipHoldSeconds: how long the clip light stays lit after a clipped block; lufsRange: [low, high] LUFS of the
  // meter bar and the strip.
  constructor({ rows = ["output"], seconds = 12, width = 720, height = 128, clipHoldSeconds = 3,
                lufsRange = [-50, 0] } = {}) {
    this.seconds = seconds;
    this.width = width;
    this.clipHold = 1000 * clipHoldSeconds;
    this.lufsRange = lufsRange;
    this.blocks = 0;
    this.frame = 0;
    this.el = document.createElement("div");
    this.el.className = "lmdm-view";
    this.el.dataset.blocks = "0";
    this.rows = new Map();
    for (const source of rows) this.rows.set(source, this._row(source, width, height));
  }

  _row(source, width, height) {
    const make = (tag, className, text) => {
      const node = document.createElement(tag);
      node.className = className;
      if (text !== undefined) node.textContent = text;
      return node;
    };
    const spec = make("canvas", "lmdm-view-canvas");
    spec.width = width; spec.height = height;
    const strip = make("canvas", "lmdm-view-strip");
    strip.width = width; strip.height = 26;
    const fill = make("div", "lmdm-view-fill");
    const bar = make("div", "lmdm-view-bar");
    bar.append(fill);
    const lufs = make("div", "lmdm-view-lufs", lmdmViewLufsText(null));
    const info = make("div", "lmdm-view-info", "block –");
    const clip = make("div", "lmdm-view-clip", "clip");
    const texts = make("div", "lmdm-view-texts");
    texts.append(lufs, info, clip);
    const meter = make("div", "lmdm-view-meter");
    meter.append(bar, texts);
    const plots = make("div", "lmdm-view-plots");
    plots.append(spec, strip);
    const root = make("div", "lmdm-view-row");
    root.dataset.source = source;
    root.dataset.blocks = "0";
    root.append(make("div", "lmdm-view-name", source), plots, meter);
    this.el.append(root);
    const off = document.createElement("canvas");
    return { source, root, spec, strip, fill, lufs, info, clip, off, img: null, t: 0, blocks: 0,
             pending: [], wipe: false, skipped: 0, clipTimer: 0 };
  }

  // Take one message: header as sent by lmdm.live.view.block_view, buffer its uint8 payload (DataView,
  // ArrayBuffer or typed array). Returns false (and draws nothing) for a message this view does not show.
  add(header, buffer) {
    if (!header || header.type !== "view") return false;
    const row = this.rows.get(header.source);
    if (!row || !buffer) return false;
    const u8 = buffer instanceof ArrayBuffer ? new Uint8Array(buffer)
      : new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
    if (!(header.frames > 0 && header.mels > 0 && header.seconds > 0) || u8.length !== header.frames * header.mels) {
      console.warn("LiveView: payload does not match its header", header, u8.length);
      return false;
    }
    row.pending.push({ h: header, q: u8.slice() });
    // a hidden tab runs no animation frames: keep at most one view's worth waiting, the rest has scrolled off
    let queued = row.pending.reduce((s, p) => s + p.h.seconds, 0);
    while (row.pending.length > 1 && queued - row.pending[0].h.seconds >= this.seconds) {
      const old = row.pending.shift();
      queued -= old.h.seconds;
      row.t += old.h.seconds;
      row.skipped += 1;
      row.wipe = true;
      this._meter(row, old.h);
    }
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.flush(); });
    return true;
  }

  // Draw what is waiting now (the animation frame does this by itself).
  flush() {
    if (this.frame) { cancelAnimationFrame(this.frame); this.frame = 0; }
    for (const row of this.rows.values()) {
      if (row.wipe) {
        for (const c of [row.spec, row.strip]) c.getContext("2d").clearRect(0, 0, c.width, c.height);
        row.wipe = false;
      }
      const n = row.pending.length + row.skipped;
      for (const p of row.pending) { this._draw(row, p.h, p.q); this._meter(row, p.h); }
      row.pending = [];
      row.skipped = 0;
      row.blocks += n;
      this.blocks += n;
      row.root.dataset.blocks = String(row.blocks);
    }
    this.el.dataset.blocks = String(this.blocks);
  }

  _draw(row, h, q) {
    const W = this.width, pps = W / this.seconds;
    const w = Math.min(W, Math.max(1, Math.round((row.t + h.seconds) * pps) - Math.round(row.t * pps)));
    row.t += h.seconds;
    const x = W - w;
    for (const c of [row.spec, row.strip]) {  // scroll left by the block's width: the history is not redrawn
      const ctx = c.getContext("2d");
      ctx.globalCompositeOperation = "copy";  // replace, not blend: transparent pixels move too
      ctx.drawImage(c, -w, 0);
      ctx.globalCompositeOperation = "source-over";
    }
    // the block's image, frames wide and mels high, low bands at the bottom
    const { frames, mels } = h;
    if (row.off.width !== frames || row.off.height !== mels) {
      row.off.width = frames; row.off.height = mels; row.img = null;
    }
    const octx = row.off.getContext("2d");
    if (!row.img) row.img = octx.createImageData(frames, mels);
    const px = new Uint32Array(row.img.data.buffer);
    for (let f = 0; f < frames; f++) {
      const base = f * mels;
      for (let m = 0; m < mels; m++) px[(mels - 1 - m) * frames + f] = LMDM_VIEW_LUT[q[base + m]];
    }
    octx.putImageData(row.img, 0, 0);
    const H = row.spec.height;
    const s = row.spec.getContext("2d");
    s.imageSmoothingEnabled = true;
    s.drawImage(row.off, 0, 0, frames, mels, x, 0, w, H);
    // the block line where the block begins: an answer's chunk starts with the previous block's held-back tail
    const seam = x + Math.min(w - 1, Math.max(0, Math.round((Number(h.seam_s) || 0) / h.seconds * w)));
    s.fillStyle = "rgba(255, 255, 255, 0.75)";
    s.fillRect(seam, 0, 1, H);
    s.font = "10px monospace";
    s.textBaseline = "top";
    s.fillStyle = "rgba(0, 0, 0, 0.6)";
    s.fillText(String(h.block), seam + 4, 3);
    s.fillStyle = "#fff";
    s.fillText(String(h.block), seam + 3, 2);
    // the LUFS strip: the value on top, under it a bar per block (red: clipped, magenta: repaired NaN/inf)
    const st = row.strip.getContext("2d");
    const SH = row.strip.height, TEXT = 10, BAR = SH - TEXT;
    const [lo, hi] = this.lufsRange;
    const ok = h.lufs !== null && h.lufs !== undefined && Number.isFinite(h.lufs);
    const bar = Math.round(BAR * (ok ? Math.min(1, Math.max(0, (h.lufs - lo) / (hi - lo))) : 0));
    st.fillStyle = h.clipped > 0 ? "#d62828" : h.repaired ? "#c218c2" : "#2a9d5c";
    st.fillRect(x + 1, SH - bar, w - 1, bar);
    st.fillStyle = "rgba(255, 255, 255, 0.35)";
    st.fillRect(x, 0, 1, SH);
    if (w >= 28) {
      st.font = "9px monospace";
      st.textBaseline = "top";
      st.fillStyle = h.clipped > 0 ? "#ff8080" : "#ddd";
      st.fillText(ok ? lmdmViewLufsText(h.lufs).replace(" LUFS", "") : "–", x + 3, 1);
    }
  }

  _meter(row, h) {
    const [lo, hi] = this.lufsRange;
    const ok = h.lufs !== null && h.lufs !== undefined && Number.isFinite(h.lufs);
    row.fill.style.height = `${ok ? 100 * Math.min(1, Math.max(0, (h.lufs - lo) / (hi - lo))) : 0}%`;
    row.fill.classList.toggle("clipped", h.clipped > 0);
    row.lufs.textContent = lmdmViewLufsText(h.lufs);
    row.info.textContent = `block ${h.block} · peak ${Number(h.peak).toFixed(2)}` +
      (h.repaired ? ` · repaired${h.nonfinite ? ` (${h.nonfinite} NaN/inf)` : ""}` : "");
    if (h.clipped > 0) {
      row.clip.classList.add("lit");
      row.clip.textContent = `clip ${h.clipped}`;
      row.clip.title = `block ${h.block}: ${h.clipped} samples at or above 0.999 of full scale`;
      clearTimeout(row.clipTimer);
      row.clipTimer = setTimeout(() => this._unlight(row), this.clipHold);
    }
  }

  _unlight(row) {
    clearTimeout(row.clipTimer);
    row.clipTimer = 0;
    row.clip.classList.remove("lit");
    row.clip.textContent = "clip";
    row.clip.title = "";
  }

  // Forget everything drawn and waiting.
  clear() {
    if (this.frame) { cancelAnimationFrame(this.frame); this.frame = 0; }
    for (const row of this.rows.values()) {
      for (const c of [row.spec, row.strip]) c.getContext("2d").clearRect(0, 0, c.width, c.height);
      Object.assign(row, { t: 0, blocks: 0, pending: [], wipe: false, skipped: 0 });
      row.root.dataset.blocks = "0";
      row.fill.style.height = "0%";
      row.fill.classList.remove("clipped");
      row.lufs.textContent = lmdmViewLufsText(null);
      row.info.textContent = "block –";
      this._unlight(row);
    }
    this.blocks = 0;
    this.el.dataset.blocks = "0";
  }

  // Stop the animation frame and timers (call from a widget's cleanup).
  dispose() {
    this.clear();
  }
}
