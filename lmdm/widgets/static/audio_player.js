// Shared by the lmdm widgets: plays Float32 audio chunks sent by the kernel as binary messages, scheduled
// back to back through a small jitter buffer, and measures the kernel websocket round trip.
// With dropBacklog (the live microphone), a chunk that would start more than half a chunk later than the jitter
// buffer asks is dropped instead of queued: after a stall (a busy kernel, a slow start) the answer catches up
// with the player instead of lagging by the backlog for the rest of the session.
// With schedule(t) (the live microphone), output sample s plays at exactly t + s / rate: the answer keeps a fixed
// distance from the input (the generative delay plus this buffer), and a chunk that arrives after its slot is
// an underrun whose late part is cut (counted in trimmedSeconds) instead of delaying everything after it.
class AudioPlayer {
  constructor(jitterSeconds = 0.15, { dropBacklog = false } = {}) {
    this.jitter = jitterSeconds;
    this.dropBacklog = dropBacklog;
    this.dropped = 0;
    this.lastLead = NaN;
    this.ctx = null;
    this.gain = null;
    this.nextTime = 0;
    this.chunks = 0;
    this.underruns = 0;
    this.samples = 0;
    this.anchor = null;
    this.received = 0;
    this.trimmedSeconds = 0;
    this.lateLog = [];
    this.leads = [];  // the first chunks' lead (ms before their slot) and length, for diagnosis
  }
  schedule(t) {  // output sample 0 plays at AudioContext time t (see the header)
    this.anchor = t;
    this.received = 0;
    this.scheduledChunks = 0;
    this.lateLog = [];
    this.leads = [];
  }
  ensure() {
    if (!this.ctx) {
      this.ctx = new AudioContext();
      this.gain = this.ctx.createGain();
      this.gain.connect(this.ctx.destination);
    }
    if (this.ctx.state === "suspended") this.ctx.resume();
    return this.ctx;
  }
  play(buffer, rate) {
    const ctx = this.ensure();
    let data = new Float32Array(buffer.buffer ? buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength) : buffer);
    if (data.length === 0) return;
    const now = ctx.currentTime, duration = data.length / rate;
    let start;
    if (this.anchor !== null) {
      const slot = this.anchor + this.received / rate, guard = 0.003;  // one render quantum
      if (this.leads.length < 12) this.leads.push(`${Math.round(1000 * (slot - now))}/${data.length}`);
      this.received += data.length;
      start = slot;
      if (slot < now) {                   // late: keep the schedule, cut what can no longer play on time
        const skip = Math.ceil((now + guard - slot) * rate);
        if (this.scheduledChunks > 0) this.underruns += 1;  // the session's first chunk starts it: never an underrun
        this.lateLog.push(`${this.scheduledChunks}:${Math.round(1000 * (now - slot))}`);  // chunk index: ms late
        if (this.lateLog.length > 20) this.lateLog.shift();
        this.trimmedSeconds += Math.min(skip, data.length) / rate;
        this.scheduledChunks += 1;
        if (skip >= data.length) { this.dropped += 1; return; }
        data = data.subarray(skip);
        start = slot + skip / rate;
      } else this.scheduledChunks += 1;
    } else {
      if (this.nextTime < now) {          // the buffer ran dry: start again one jitter buffer ahead
        if (this.chunks > 0) this.underruns += 1;
        this.nextTime = now + this.jitter;
      }
      start = this.nextTime;              // this chunk waits start - now before it is heard
      if (this.dropBacklog && start - now > this.jitter + 0.5 * duration) {
        this.dropped += 1;
        return;
      }
    }
    const audio = ctx.createBuffer(1, data.length, rate);
    audio.copyToChannel(data, 0);
    const src = ctx.createBufferSource();
    src.buffer = audio;
    src.connect(this.gain);
    src.start(start);
    this.lastLead = start - now;
    this.nextTime = start + audio.duration;
    this.chunks += 1;
    this.samples += data.length;
  }
  bufferedSeconds() {
    return this.ctx ? Math.max(0, this.nextTime - this.ctx.currentTime) : 0;
  }
  stop() {
    this.nextTime = 0;
    this.anchor = null;
    if (this.ctx) { this.ctx.close(); this.ctx = null; }
  }
}

// Ping the kernel every second with two small messages sent back to back and time the *second* answer: the
// pattern of streamed audio and control messages. A lone ping never waits for Nagle's algorithm; the second of a
// pair does, when the server leaves TCP_NODELAY off (its answer waits for the ACK of the first). The median of
// the last 21 pairs is shown and reported back.
function startPing(model, onRtt) {
  const rtts = [];
  const firstSeen = new Set();
  const handler = (msg) => {
    if (msg && msg.type === "pong" && typeof msg.t === "number") {
      if (!firstSeen.has(msg.t)) { firstSeen.add(msg.t); return; }
      firstSeen.delete(msg.t);
      rtts.push(performance.now() - msg.t);
      if (rtts.length > 21) rtts.shift();
      const sorted = [...rtts].sort((a, b) => a - b);
      onRtt(sorted[Math.floor(sorted.length / 2)]);
    }
  };
  model.on("msg:custom", handler);
  const timer = setInterval(() => {
    const t = performance.now();
    model.send({ type: "ping", t });
    model.send({ type: "ping", t });
    if (firstSeen.size > 50) firstSeen.clear();  // answers lost with a restarted kernel: forget them
  }, 1000);
  return () => { clearInterval(timer); model.off("msg:custom", handler); };
}

function el(tag, attrs = {}, children = []) {
  const node = Object.assign(document.createElement(tag), attrs);
  for (const c of children) node.append(c);
  return node;
}

function fmt(v, digits = 0, unit = "") {
  return (v === null || v === undefined || Number.isNaN(v)) ? "–" : `${Number(v).toFixed(digits)}${unit}`;
}

// Readouts update a few times a second at most, and only what changed: every DOM write in JupyterLab costs a style
// recalculation and a layout of the page, which on 2 cores competes with the music (measured: 63 layouts a second
// and 61% of the renderer's main thread while the microphone ran, before this).
function throttled(fn, ms = 250) {
  let timer = 0;
  const run = () => { timer = 0; fn(); };
  return () => { if (!timer) timer = setTimeout(run, ms); };
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// The worker's scheduling, lateness and level guard, as both live widgets show them: the readout's suffix, and the
// value of their data-realtime attribute ("true" / "false" / "–" before the first stats).
function engineNotes(s) {
  const g = s.level_guard;
  return (s.realtime ? ` · ${s.realtime.generation ? "real-time" : "normal"} priority` : "") +
    (s.late_s > 0 ? ` · behind by ${fmt(1000 * s.late_s, 0, " ms")} (overloaded)` : "") +
    (g ? ` · level guard: ${g.cut_blocks} of ${g.blocks} blocks turned down` +
         (g.cut_blocks ? ` (at most ${fmt(g.max_cut_db, 1, " dB")})` : "") : "");
}
// Both live widgets' level guard box, bound to their level_guard trait (it applies from the next start), and the
// value of their data-level-guard-cuts attribute (blocks turned down; "–" while the guard is off).
function levelGuardBox(model) {
  const box = el("input", { type: "checkbox", checked: Boolean(model.get("level_guard")) });
  box.addEventListener("change", () => { model.set("level_guard", box.checked); model.save_changes(); });
  model.on("change:level_guard", () => { box.checked = Boolean(model.get("level_guard")); });
  return el("label", { title: "turn down any block louder than the training data's loudest 0.4 s (or with a 16 ms frame louder than all but one in 1,000 of its frames) before it is played and cached; from the next start" }, [box, " level guard"]);
}
function levelGuardData(s) {
  return fmt(s.level_guard && s.level_guard.cut_blocks);
}
function realtimeData(s) {
  return s.realtime ? String(Boolean(s.realtime.generation)) : "–";
}

function setData(node, values) {
  for (const [k, v] of Object.entries(values)) {
    const s = String(v);
    if (node.dataset[k] !== s) node.dataset[k] = s;
  }
}
