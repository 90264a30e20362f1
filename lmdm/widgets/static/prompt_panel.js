// PromptPanel: prompt, guidance, steps, seed, start/stop, live readout and live view (LiveView: mel spectrogram,
// per-block LUFS and clip light); plays the stream the kernel sends. The readout's figures are also kept as
// data-* attributes of the widget (data-first-answer-ms, data-rtt-ms, data-underruns, ...) for tests and users.
export default {
  render({ model, el: root }) {
    const player = new AudioPlayer(0.2);
    const prompt = el("input", { type: "text", className: "lmdm-prompt", value: model.get("prompt"),
                                 placeholder: "a slow Bach chorale on church organ" });
    // no min/max here: the kernel checks the values with SamplerConfig (one set of ranges) and shows its error
    const cfg = el("input", { type: "number", step: 0.5, value: model.get("cfg_scale"), style: "width:4em" });
    const steps = el("input", { type: "number", step: 1, value: model.get("steps"), style: "width:4em" });
    const seed = el("input", { type: "number", step: 1, value: model.get("seed"), style: "width:5em" });
    const button = el("button", { className: "lmdm-start", textContent: "start" });
    const readout = el("div", { className: "lmdm-readout lmdm-stats" });
    const state = el("span", { className: "lmdm-status" });
    const error = el("div", { className: "lmdm-error" });
    const view = new LiveView({ rows: ["output"], seconds: 12 });
    let rtt = NaN, clicked = NaN, firstAnswer = NaN;
    const box = el("div", { className: "lmdm-widget lmdm-prompt-panel" }, [
      el("div", { className: "lmdm-row" }, [el("label", {}, ["prompt ", prompt])]),
      el("div", { className: "lmdm-row" }, [
        el("label", {}, ["guidance ", cfg]), el("label", {}, ["steps ", steps]), el("label", {}, ["seed ", seed]),
        levelGuardBox(model), button, state]),
      readout, view.el, error]);
    root.append(box);

    const send = () => { prompt.value !== model.get("prompt") && model.set("prompt", prompt.value); model.save_changes(); };
    prompt.addEventListener("change", send);
    prompt.addEventListener("keydown", (e) => { if (e.key === "Enter") send(); });
    for (const [input, name, parse] of [[cfg, "cfg_scale", parseFloat], [steps, "steps", parseInt], [seed, "seed", parseInt]]) {
      input.addEventListener("change", () => { const v = parse(input.value); if (!Number.isNaN(v)) { model.set(name, v); model.save_changes(); } });
      model.on(`change:${name}`, () => { input.value = model.get(name); });  // a value the kernel refused goes back
    }
    button.addEventListener("click", () => {
      const on = !model.get("running");
      if (on) { player.ensure(); view.clear(); clicked = performance.now(); firstAnswer = NaN; } else player.stop();
      model.set("running", on); model.save_changes();
    });
    const show = () => {
      const s = model.get("stats") || {};
      const status = model.get("status");
      setText(button, model.get("running") ? "stop" : "start");
      setText(state, status === "loading" ? "loading the model…" : status);
      setData(state, { status });
      setText(readout, `blocks ${fmt(s.blocks)} · RTF ${fmt(s.rtf, 3)} · underruns ${fmt(s.underruns)}` +
        ` (browser ${player.underruns}) · buffered ${fmt(1000 * player.bufferedSeconds(), 0, " ms")}` +
        ` · first answer ${fmt(firstAnswer / 1000, 2, " s")} · kernel round trip ${fmt(rtt, 1, " ms")}${engineNotes(s)}`);
      setData(box, { firstAnswerMs: fmt(firstAnswer, 0), rttMs: fmt(rtt, 1), blocks: fmt(s.blocks),
        underruns: fmt(s.underruns), browserUnderruns: player.underruns, levelGuardCuts: levelGuardData(s),
        realtime: realtimeData(s), status });
      setText(error, model.get("error") || "");
    };
    const update = throttled(show);
    for (const name of ["stats", "running", "error", "status"]) model.on(`change:${name}`, update);
    model.on("change:prompt", () => { if (document.activeElement !== prompt) prompt.value = model.get("prompt"); });
    const onMsg = (msg, buffers) => {
      if (msg && msg.type === "block") {  // the worker made a block: its index and the prompt it was made with
        setData(box, { lastBlock: msg.block, lastBlockPrompt: msg.prompt });
        return;
      }
      if (!msg || !buffers || !buffers.length) return;
      if (msg.type === "audio") {
        if (Number.isNaN(firstAnswer) && !Number.isNaN(clicked)) firstAnswer = performance.now() - clicked;
        player.play(buffers[0], msg.rate); update();
      } else if (msg.type === "view") view.add(msg, buffers[0]);
    };
    model.on("msg:custom", onMsg);
    const stopPing = startPing(model, (v) => { rtt = v; update(); });
    show();
    return () => { stopPing(); model.off("msg:custom", onMsg); player.stop(); };
  },
};
