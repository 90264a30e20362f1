// SketchPad: draw strokes (time across, pitch up). Strokes go to the kernel on pointer-up, never per move.
export default {
  render({ model, el: root }) {
    const W = 720, H = 260, PAD = 36;
    const player = new AudioPlayer(0.1);
    const canvas = el("canvas", { className: "lmdm-canvas", width: W, height: H });
    const promptInput = el("input", { type: "text", className: "lmdm-prompt", value: model.get("prompt") });
    const gen = el("button", { className: "lmdm-generate", textContent: "generate" });
    const clear = el("button", { textContent: "clear" });
    const info = el("div", { className: "lmdm-readout lmdm-sketch-info" });
    const error = el("div", { className: "lmdm-error" });
    root.append(el("div", { className: "lmdm-widget lmdm-sketch-pad" }, [
      canvas, el("div", { className: "lmdm-row" }, [el("label", {}, ["prompt ", promptInput]), gen, clear]), info, error]));
    const ctx = canvas.getContext("2d");
    let strokes = JSON.parse(JSON.stringify(model.get("strokes") || []));
    let current = null;

    const dur = () => model.get("duration");
    const range = () => model.get("pitch_range");
    const toPoint = (e) => {
      const r = canvas.getBoundingClientRect();
      const x = Math.min(Math.max(e.clientX - r.left, PAD), W - 8), y = Math.min(Math.max(e.clientY - r.top, 8), H - PAD);
      return [((x - PAD) / (W - 8 - PAD)) * dur(), 1 - (y - 8) / (H - PAD - 8)];
    };
    const toXY = (t, h) => [PAD + (t / dur()) * (W - 8 - PAD), 8 + (1 - h) * (H - PAD - 8)];
    const pitchToH = (p) => { const [lo, hi] = range(); return (p - lo) / (hi - lo); };

    function draw() {
      ctx.clearRect(0, 0, W, H);
      ctx.fillStyle = "#555"; ctx.font = "11px sans-serif"; ctx.strokeStyle = "#ddd"; ctx.lineWidth = 1;
      const [lo, hi] = range();
      for (let p = Math.ceil(lo / 12) * 12; p <= hi; p += 12) {          // octave lines labelled C
        const [, y] = toXY(0, pitchToH(p));
        ctx.beginPath(); ctx.moveTo(PAD, y); ctx.lineTo(W - 8, y); ctx.stroke(); ctx.fillText(`C${p / 12 - 1}`, 4, y + 4);
      }
      for (let s = 0; s <= dur(); s += 1) {                               // seconds
        const [x] = toXY(s, 0);
        ctx.beginPath(); ctx.moveTo(x, 8); ctx.lineTo(x, H - PAD); ctx.stroke(); ctx.fillText(`${s}s`, x - 6, H - PAD + 14);
      }
      ctx.fillText("time →", W / 2 - 20, H - 6);
      ctx.save(); ctx.translate(12, H / 2 + 20); ctx.rotate(-Math.PI / 2); ctx.fillText("pitch →", 0, 0); ctx.restore();
      const fr = (model.get("contour") || []).length / dur();
      const plotFrames = (values, color, width) => {
        ctx.strokeStyle = color; ctx.lineWidth = width; let open = false; ctx.beginPath();
        values.forEach((p, i) => {
          if (p > 0) { const [x, y] = toXY((i + 0.5) / fr, pitchToH(p)); open ? ctx.lineTo(x, y) : ctx.moveTo(x, y); open = true; }
          else open = false;
        });
        ctx.stroke();
      };
      plotFrames(model.get("contour") || [], "rgba(230,120,20,0.9)", 3);     // the contour Python computed
      plotFrames(model.get("tracked") || [], "rgba(40,120,200,0.8)", 1.5);   // pitch tracked from the last render
      ctx.strokeStyle = "#222"; ctx.lineWidth = 1.5;
      for (const s of [...strokes, ...(current ? [current] : [])]) {
        ctx.beginPath(); s.forEach(([t, h], i) => { const [x, y] = toXY(t, h); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); }); ctx.stroke();
      }
    }
    canvas.addEventListener("pointerdown", (e) => { canvas.setPointerCapture(e.pointerId); current = [toPoint(e)]; draw(); });
    canvas.addEventListener("pointermove", (e) => { if (current) { current.push(toPoint(e)); draw(); } });
    const finish = () => {
      if (!current) return;
      strokes.push(current); current = null;
      model.set("strokes", JSON.parse(JSON.stringify(strokes))); model.save_changes();   // synced on pointer-up only
      draw();
    };
    canvas.addEventListener("pointerup", finish);
    canvas.addEventListener("pointercancel", finish);
    clear.addEventListener("click", () => { strokes = []; model.set("strokes", []); model.save_changes(); draw(); });
    promptInput.addEventListener("change", () => { model.set("prompt", promptInput.value); model.save_changes(); });
    gen.addEventListener("click", () => { player.ensure(); model.send({ type: "generate" }); });
    const show = () => {
      const c = model.get("correlation");
      info.textContent = `${strokes.length} stroke(s) · received by the kernel: ${model.get("strokes_received")}` +
        ` · ${model.get("busy") ? "rendering…" : "contour correlation " + fmt(c, 2)}`;
      error.textContent = model.get("error") || "";
      gen.disabled = model.get("busy");
    };
    for (const name of ["contour", "tracked"]) model.on(`change:${name}`, draw);
    for (const name of ["correlation", "busy", "error", "strokes_received"]) model.on(`change:${name}`, show);
    model.on("change:strokes", () => { if (!current) { strokes = JSON.parse(JSON.stringify(model.get("strokes") || [])); draw(); show(); } });
    const onMsg = (msg, buffers) => { if (msg && msg.type === "audio" && buffers && buffers.length) player.play(buffers[0], msg.rate); };
    model.on("msg:custom", onMsg);
    draw(); show();
    return () => { model.off("msg:custom", onMsg); player.stop(); };
  },
};
