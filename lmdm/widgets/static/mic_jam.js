// MicJam: the microphone through an AudioWorklet to the kernel (Float32 binary messages), the generative
// delay's answer back through the jitter buffer; level meter, monitor volume, latency and underrun readout, and the
// live view (LiveView: input and answer mel spectrograms, per-block LUFS and clip light, block boundaries). The
// readout's figures are also data-* attributes of the widget (data-first-answer-ms, data-heard-ms, data-rtt-ms,
// data-underruns-after-first, ...) for tests and users.
const CAPTURE_WORKLET = `
class LmdmCapture extends AudioWorkletProcessor {
  // 4096 samples (85 ms at 48 kHz) per message: each message to the kernel also makes JupyterLab redraw the
  // kernel's busy/idle status twice, so 2048 (23 messages a second) cost the page 46 layouts a second
  constructor() { super(); this.buf = new Float32Array(4096); this.n = 0; }
  process(inputs) {
    const input = inputs[0];
    if (input && input.length) {
      const len = input[0].length;
      for (let i = 0; i < len; i++) {
        let v = 0;
        for (let c = 0; c < input.length; c++) v += input[c][i];
        this.buf[this.n++] = v / input.length;
        if (this.n === this.buf.length) { this.port.postMessage(this.buf.slice(0)); this.n = 0; }
      }
    }
    return true;
  }
}
registerProcessor("lmdm-capture", LmdmCapture);
`;

export default {
  render({ model, el: root }) {
    const player = new AudioPlayer(0.08);  // scheduled against the capture clock at each start (see start())
    const prompt = el("input", { type: "text", className: "lmdm-prompt", value: model.get("prompt") });
    const button = el("button", { className: "lmdm-mic-start", textContent: "start microphone" });
    const meter = el("div", { className: "lmdm-meter" }, [el("div")]);
    const monitor = el("input", { type: "range", min: 0, max: 1, step: 0.05, value: model.get("monitor_volume") });
    const readout = el("div", { className: "lmdm-readout lmdm-stats" });
    const heard = el("div", { className: "lmdm-readout lmdm-input-stats" });
    const error = el("div", { className: "lmdm-error" });
    const state = el("span", { className: "lmdm-status" });
    const view = new LiveView({ rows: ["input", "output"], seconds: 12 });
    const box = el("div", { className: "lmdm-widget lmdm-mic-jam" }, [
      el("div", { className: "lmdm-row" }, [el("label", {}, ["answer as ", prompt]),
        levelGuardBox(model), button, state]),
      el("div", { className: "lmdm-row" }, [el("span", { textContent: "input" }), meter,
                                            el("label", {}, ["monitor ", monitor])]),
      readout, heard, view.el, error]);
    root.append(box);
    let stream = null, node = null, source = null, monitorGain = null, sent = 0, rtt = NaN;
    let level = 0, meterFrame = 0;
    let clicked = NaN, firstAnswer = NaN, underrunsAtFirst = 0, browserAtFirst = 0, late = [];
    // The session's first block needs no input (the delay covers it), so with a fast worker its audio can arrive
    // before the first captured chunk has fixed the schedule: it waits here until then instead of being placed on
    // the previous session's schedule (and lost, shifting every later chunk a block late).
    let unscheduled = null;
    const loaded = new WeakMap();  // one worklet module per AudioContext: registering it twice throws

    function loadWorklet(ctx) {
      if (!loaded.has(ctx)) {
        const url = URL.createObjectURL(new Blob([CAPTURE_WORKLET], { type: "application/javascript" }));
        loaded.set(ctx, ctx.audioWorklet.addModule(url).finally(() => URL.revokeObjectURL(url)));
      }
      return loaded.get(ctx);
    }

    async function start() {
      clicked = performance.now(); firstAnswer = NaN; view.clear(); late = []; box.dataset.lateBlocks = "";
      unscheduled = [];
      try {
        const ctx = player.ensure();
        stream = await navigator.mediaDevices.getUserMedia({
          audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
        await loadWorklet(ctx);
        source = ctx.createMediaStreamSource(stream);
        node = new AudioWorkletNode(ctx, "lmdm-capture");
        const mute = ctx.createGain();            // a worklet only runs when its output is connected
        mute.gain.value = 0;
        source.connect(node); node.connect(mute); mute.connect(ctx.destination);
        monitorGain = ctx.createGain();
        monitorGain.gain.value = model.get("monitor_volume");
        source.connect(monitorGain); monitorGain.connect(ctx.destination);
        let scheduled = false;
        node.port.onmessage = (e) => {
          const chunk = e.data;
          if (!scheduled) {  // the session's input sample 0 was captured one chunk ago: its answer plays
            // delay + the jitter buffer later (the engine's output sample s answers input sample s - delay)
            player.schedule(ctx.currentTime - chunk.length / ctx.sampleRate + player.jitter);
            scheduled = true;
            const early = unscheduled || [];
            unscheduled = null;
            for (const [buffer, rate] of early) player.play(buffer, rate);
          }
          let sum = 0;
          for (let i = 0; i < chunk.length; i++) sum += chunk[i] * chunk[i];
          level = Math.min(1, 3 * Math.sqrt(sum / chunk.length));
          if (!meterFrame) meterFrame = requestAnimationFrame(() => {  // compositor only: no layout
            meterFrame = 0; meter.firstChild.style.transform = `scaleX(${level.toFixed(2)})`; });
          model.send({ type: "audio", rate: ctx.sampleRate }, undefined, [chunk.buffer]);
          sent += 1;
        };
        model.set("running", true); model.save_changes();
      } catch (err) {
        error.textContent = `microphone: ${err.name}: ${err.message}`;
        if (stream) stream.getTracks().forEach((t) => t.stop());  // never leave the microphone on
        stream = null;
        unscheduled = null;
      }
    }
    function stop() {
      if (stream) stream.getTracks().forEach((t) => t.stop());
      if (node) node.disconnect();
      if (source) source.disconnect();
      stream = node = source = null;
      unscheduled = null;
      model.set("running", false); model.save_changes();
    }
    button.addEventListener("click", () => (stream ? stop() : start()));
    prompt.addEventListener("change", () => { model.set("prompt", prompt.value); model.save_changes(); });
    monitor.addEventListener("input", () => {
      const v = parseFloat(monitor.value);
      if (monitorGain) monitorGain.gain.value = v;
      model.set("monitor_volume", v); model.save_changes();
    });
    const show = () => {
      const s = model.get("stats") || {}, i = model.get("input_stats") || {};
      const status = model.get("status");
      setText(button, stream ? "stop" : "start microphone");
      setText(state, status === "loading" ? "loading the model…" : status);
      setData(state, { status });
      // input -> heard: the player schedules output sample s at (capture time of input sample 0) + jitter + s/rate,
      // and output sample s answers input sample s - delay: heard = delay + jitter + the output device's latency,
      // exactly, for every chunk that arrived on time (a late one is an underrun, counted below)
      const ctx = player.ctx;
      const device = ctx ? (ctx.baseLatency || 0) + (ctx.outputLatency || 0) : 0;
      const audible = s.delay_ms === undefined || s.delay_ms === null ? NaN : s.delay_ms + 1000 * (player.jitter + device);
      setText(readout, `delay ${fmt(s.delay_ms, 0, " ms")} · answer ready ${fmt(s.latency_ms_mean, 0, " ms")}` +
        ` (max ${fmt(s.latency_ms_max, 0, " ms")}) after the input · heard ≈ ${fmt(audible, 0, " ms")} later · RTF ${fmt(s.rtf, 3)}` +
        ` · underruns ${fmt(s.underruns)} (browser ${player.underruns}, cut ${fmt(1000 * player.trimmedSeconds, 0, " ms")})` +
        ` · round trip ${fmt(rtt, 1, " ms")}` +
        ` · chunks sent ${sent}, answer chunks ${player.chunks} · first answer ${fmt(firstAnswer / 1000, 2, " s")}` +
        engineNotes(s));
      // after the first answer: chunks heard late (cut in the browser) and blocks the engine finished after their
      // design deadline (the same late block usually shows in both; only the first is heard)
      const heardLate = Number.isNaN(firstAnswer) ? NaN : player.underruns - browserAtFirst;
      const engineLate = Number.isNaN(firstAnswer) ? NaN : (s.underruns || 0) - underrunsAtFirst;
      setData(box, { firstAnswerMs: fmt(firstAnswer, 0), readyMaxMs: fmt(s.latency_ms_max, 0), heardMs: fmt(audible, 0), rttMs: fmt(rtt, 1),
        underruns: fmt(s.underruns), browserUnderruns: player.underruns, dropped: player.dropped,
        levelGuardCuts: levelGuardData(s),
        heardUnderrunsAfterFirst: fmt(heardLate), engineLateAfterFirst: fmt(engineLate), answerChunks: player.chunks, browserLate: player.lateLog.join(" "),
        browserLeads: player.leads.join(" "), pumpGapMs: fmt(s.pump_gap_ms, 0),
        realtime: realtimeData(s), status });
      setText(heard, `kernel heard ${fmt(i.seconds, 2, " s")} · rms ${fmt(i.rms, 3)} · ${fmt(i.dominant_hz, 0, " Hz")}`);
      setText(error, model.get("error") || "");
    };
    const update = throttled(show);
    for (const name of ["stats", "input_stats", "error", "running", "status"]) model.on(`change:${name}`, update);
    const onMsg = (msg, buffers) => {
      if (msg && msg.type === "block") {  // the worker made a block: its index and the prompt it was made with
        setData(box, { lastBlock: msg.block, lastBlockPrompt: msg.prompt });
        if (msg.late_s > 0) {  // the late blocks of this session (index:ms late, compute ms), for the readout and tests
          // block:ms late/ms wall/ms CPU/ms waiting for a core, of the generation thread (EngineStats.timeline)
          const ms = (x) => Math.round(1000 * (x ?? NaN));
          late.push(`${msg.block}:${ms(msg.late_s)}/${ms(msg.compute_s)}/${ms(msg.cpu_s)}/${ms(msg.run_queue_s)}`);
          box.dataset.lateBlocks = late.slice(-20).join(" ");
        }
        return;
      }
      if (!msg || !buffers || !buffers.length) return;
      if (msg.type === "audio") {
        if (Number.isNaN(firstAnswer) && stream) {
          firstAnswer = performance.now() - clicked;
          underrunsAtFirst = (model.get("stats") || {}).underruns || 0; browserAtFirst = player.underruns;
        }
        if (unscheduled) unscheduled.push([buffers[0], msg.rate]); else player.play(buffers[0], msg.rate);
        update();
      } else if (msg.type === "view") view.add(msg, buffers[0]);
    };
    model.on("msg:custom", onMsg);
    const stopPing = startPing(model, (v) => { rtt = v; model.send({ type: "rtt", ms: v }); update(); });
    show();
    return () => { stopPing(); model.off("msg:custom", onMsg); stop(); player.stop(); };
  },
};
