"""The generation worker process and its shared-memory audio rings, with real processes.

One warm worker (tiny checkpoint, generate mode) serves most tests in file order, as a notebook would use it:
warm start, generate, prompt change, a switch to jam mode, stop/start, bad commands, kill -9 and restart, close.
No test waits a guessed time: they poll for conditions, with generous timeouts for a busy machine. This module
imports nothing heavy at the top, because spawned children import it again."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lmdm.live.shm_ring import ShmRing
from tests.support.realtime import may_realtime

ROOT = Path(__file__).resolve().parent.parent
SR = 16000


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie child counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


# ---- the ring, across processes -------------------------------------------------------------------------------
def _ring_writer(name: str, conn) -> None:
    """Spawned child: attach to the ring and write what the parent asks for, samples valued by their index."""
    ring = ShmRing.attach(name)
    total = 0
    rng = np.random.default_rng(0)
    while (n := conn.recv()) is not None:
        if n > 0:  # one chunk of n samples
            ring.write(np.arange(total, total + n, dtype=np.float32))
            total += n
        else:  # -n samples in random chunks, as fast as possible (the parent reads meanwhile)
            end = total - n
            while total < end:
                k = int(min(rng.integers(1, 800), end - total))
                ring.write(np.arange(total, total + k, dtype=np.float32))
                total += k
        conn.send(total)
    ring.close()


def test_ring_across_processes_wraps_contiguously_and_counts_what_it_drops():
    ctx = mp.get_context("spawn")
    ring = ShmRing.create(1000)
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_ring_writer, args=(ring.name, child), daemon=True)
    proc.start()
    try:
        def write(n):
            parent.send(n)
            assert parent.poll(30), "the writer did not answer"
            return parent.recv()

        write(700)
        assert ring.read().tolist() == list(range(700))
        write(700)  # wraps around the end of the data area
        assert ring.read().tolist() == list(range(700, 1400)) and ring.dropped == 0
        assert len(ring.read()) == 0
        write(2500)  # more than the capacity while nobody reads: the newest 1000 are kept
        assert ring.read().tolist() == list(range(2900, 3900)) and ring.dropped == 1500

        # a fast writer against a reader: every read is intact and contiguous; gaps are exactly what is counted
        parent.send(-300_000)
        got, last, gaps = 0, 3899, 0
        while True:
            done = parent.poll(0)
            x = ring.read()
            if len(x):
                assert np.array_equal(x, np.arange(x[0], x[0] + len(x), dtype=np.float32)), "a torn read"
                gaps += int(x[0]) - last - 1
                last, got = int(x[-1]), got + len(x)
            if done and ring.available == 0:
                break
        assert parent.recv() == 303_900 == last + 1
        assert gaps == ring.dropped - 1500 and got + gaps == 300_000
        parent.send(None)
        proc.join(10)
        assert proc.exitcode == 0
    finally:
        ring.close()
    with pytest.raises(FileNotFoundError):  # the creator unlinked it
        ShmRing.attach(ring.name)


def test_ring_attach_leaves_the_block_to_its_creator_without_tracker_noise():
    """An attaching process that exits does not take the block with it, and the creator's unlink makes the
    resource tracker print nothing (CPython gh-82300)."""
    code = textwrap.dedent("""
        import multiprocessing as mp, numpy as np
        from lmdm.live.shm_ring import ShmRing
        from tests.test_worker import _ring_writer
        if __name__ == "__main__":
            ring = ShmRing.create(100)
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_ring_writer, args=(ring.name, child))
            p.start()
            parent.send(5); parent.recv(); parent.send(None); p.join()
            again = ShmRing.attach(ring.name)  # still there after the attacher exited
            print(again.read().tolist(), p.exitcode)
            again.close(); ring.close()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[0.0, 1.0, 2.0, 3.0, 4.0] 0"
    assert "resource_tracker" not in r.stderr and "KeyError" not in r.stderr, r.stderr


def test_ring_refuses_bad_sizes():
    from lmdm.errors import UsageError

    for bad in (0, -5, 2.5, True):
        with pytest.raises(UsageError, match="positive whole number"):
            ShmRing.create(bad)


# ---- one warm worker ------------------------------------------------------------------------------------------
def gen_config(**kw):
    from lmdm.live.engine import EngineConfig
    from lmdm.streaming.streamer import SamplerConfig

    return EngineConfig(**{"mode": "generate", "prompt": "string ensemble", "lookahead_blocks": 1,
                           "sampler": SamplerConfig(steps=2, sampler="pingpong", cfg_scale=1.0, seed=0), **kw})


class Session:
    """Drives a client: polls its events and reads its output, keeping both."""

    def __init__(self, client):
        self.client, self.events, self.audio = client, [], []

    def pump(self):
        self.events += self.client.poll()
        x = self.client.read_output()
        if len(x):
            self.audio.append(x)

    def until(self, condition, timeout=30.0, what="condition"):
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            if condition():
                return
            assert time.monotonic() < deadline, (f"timed out after {timeout} s waiting for {what}; status "
                                                 f"{self.client.status}, error {self.client.error}")
            time.sleep(0.01)

    def of(self, kind):
        return [e for e in self.events if e[0] == kind]

    def clear(self):
        self.events, self.audio = [], []

    @property
    def samples(self):
        return sum(len(a) for a in self.audio)


@pytest.fixture(scope="module")
def worker(tiny_ckpt):
    from lmdm.live.worker import WorkerClient
    from lmdm.streaming.threads import ThreadPolicy

    env = dict(os.environ)
    client = WorkerClient(tiny_ckpt, gen_config(), policy=ThreadPolicy(threads=1, omp_wait="PASSIVE", realtime=7),
                          input_seconds=4.0, output_seconds=4.0)
    assert dict(os.environ) == env, "the kernel's environment must be left as it was"
    yield Session(client)
    client.close()


def test_worker_is_warm_before_start_under_the_thread_policy(worker):
    c = worker.client
    t0 = time.monotonic()
    assert c.status == "loading" and c.alive and c.sample_rate == SR
    assert c.wait_ready(60), c.error
    worker.until(lambda: c.info, what="the info event")
    assert c.status == "ready", c.error
    assert c.info["torch_threads"] == 1 and c.info["omp_wait_policy"] == "PASSIVE"
    assert c.info["block_samples"] == 4096 and c.info["warmup_s"] > 0
    # its own session (Linux autogroup: its CPU share does not shrink with the busy threads of the kernel's session)
    assert c.info["own_session"] is True and os.getsid(c.info["pid"]) == c.info["pid"] != os.getsid(0)
    assert c.info["realtime"] == {"requested": 7, "permitted": may_realtime(7)}
    print(f"\nworker ready {time.monotonic() - t0:.1f} s after the first poll: {c.info}")
    time.sleep(0.3)
    worker.pump()
    assert not worker.of("block") and worker.samples == 0, "nothing is generated before start"


def test_generate_streams_contiguous_audio_in_real_time(worker):
    c = worker.client
    worker.clear()
    c.start()
    worker.until(lambda: c.status == "running", what="running")
    t0 = time.monotonic()
    worker.until(lambda: len(worker.of("block")) >= 8, what="8 blocks")
    blocks = worker.of("block")
    assert [b[1] for b in blocks] == list(range(len(blocks)))
    assert all(set(b[2]) == {"block", "compute_s", "cpu_s", "run_queue_s", "late_s", "prompt", "samples"}
               for b in blocks)
    # where the wall time of a block went: CPU of the generation thread, and (Linux) waiting for a core
    assert all(0 < b[2]["cpu_s"] <= b[2]["compute_s"] + 0.005 for b in blocks), blocks
    assert all(0 <= b[2]["run_queue_s"] <= b[2]["compute_s"] + 0.005 for b in blocks), blocks
    # every sample each block queued comes out of the ring, none lost or repeated
    worker.until(lambda: worker.samples == sum(b[2]["samples"] for b in worker.of("block")), what="the output")
    elapsed = time.monotonic() - t0
    audio = np.concatenate(worker.audio)
    assert c.output_dropped == 0 and np.isfinite(audio).all() and np.abs(audio).max() > 0
    # paced by the wall clock: at most the lookahead ahead of real time
    n_blocks = len(worker.of("block"))
    assert n_blocks <= (elapsed + 2.5 * 0.256) / 0.256 + 2, f"{n_blocks} blocks in {elapsed:.2f} s"
    worker.until(lambda: c.stats.get("blocks", 0) > 0 and c.stats.get("running"), what="stats")
    assert c.stats["rtf"] is not None and c.stats["latency_ms_mean"] is None  # NaN is sent as None
    # the generation and mover threads run at the policy's real-time priority where this system permits it, and
    # no other thread of the worker does (loading, the reporter and torch's own threads stay ordinary)
    granted = c.info["realtime"]["permitted"]
    assert c.stats["realtime"] == {"requested": 7, "generation": granted, "mover": granted}
    policies = [(os.sched_getscheduler(int(t)), os.sched_getparam(int(t)).sched_priority)
                for t in os.listdir(f"/proc/{c.info['pid']}/task")]
    assert sorted(p for p in policies if p[0] != os.SCHED_OTHER) == [(os.SCHED_RR, 7)] * (2 if granted else 0), policies


def test_a_prompt_change_applies_from_a_later_block(worker):
    c = worker.client
    worker.clear()
    c.set_prompt("solo piano")
    worker.until(lambda: any(b[2]["prompt"] == "solo piano" for b in worker.of("block")), what="the new prompt")
    prompts = [b[2]["prompt"] for b in worker.of("block")]
    first = prompts.index("solo piano")
    assert set(prompts[:first]) <= {"string ensemble"} and set(prompts[first:]) == {"solo piano"}
    assert c.config.prompt == "solo piano"
    with pytest.raises(ValueError, match="prompt must be text"):
        c.set_prompt(3)


def test_jam_mode_answers_pushed_input(worker):
    from lmdm.live.engine import EngineConfig
    from lmdm.streaming.streamer import SamplerConfig

    c = worker.client
    worker.clear()
    c.start(EngineConfig(mode="jam", prompt="solo piano", margin_s=0.1,
                         sampler=SamplerConfig(steps=2, sampler="pingpong", cfg_scale=1.0, seed=0)))
    worker.until(lambda: ("status", "loading") in worker.events, what="a rebuild for the new mode")
    worker.until(lambda: c.status == "running", timeout=60, what="running in jam mode")
    t = np.arange(int(2.0 * SR)) / SR
    melody = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    start, chunk = time.monotonic(), 320  # 20 ms chunks, as a microphone sends them
    for i in range(0, len(melody), chunk):
        worker.until(lambda: time.monotonic() - start >= i / SR, what="the clock")
        c.push_input(melody[i : i + chunk])
    worker.until(lambda: len(worker.of("block")) >= 3, what="jam blocks")
    assert worker.samples > 0
    worker.until(lambda: c.stats.get("input_s", 0) > 1.0, what="the input in the worker's stats")
    if c.info.get("views"):  # lmdm.live.view exists: a view of the answer and one of the input per block
        worker.until(lambda: len(worker.of("view")) >= 2, what="views")
        sources = {e[1].get("source") for e in worker.of("view") if isinstance(e[1], dict) and "source" in e[1]}
        assert sources in (set(), {"output", "input"}), sources
        # after block 0 an answer's chunk begins with the decoder's held-back tail (68 ms: 3 frames + 20 ms)
        worker.until(lambda: any(e[1]["source"] == "output" and e[1]["block"] > 0 for e in worker.of("view")),
                     what="a view of a later answer")
        seams = {(e[1]["source"], e[1]["block"] > 0, round(e[1]["seam_s"], 4)) for e in worker.of("view")}
        assert ("output", True, 0.068) in seams, seams
        assert all(s == 0.0 for src, later, s in seams if (src, later) != ("output", True)), seams
    with pytest.raises(ValueError, match="mono"):
        c.push_input(np.zeros((10, 2)))


def test_stop_then_start_again(worker):
    c = worker.client
    worker.clear()
    c.start(gen_config(prompt="solo piano"))  # back to generate mode: a rebuild
    worker.until(lambda: c.status == "running" and len(worker.of("block")) >= 2, timeout=60, what="generating")
    c.stop()
    worker.until(lambda: c.status == "stopped", what="stopped")
    time.sleep(0.6)
    worker.pump()
    after = worker.events[worker.events.index(("status", "stopped")):]
    assert not [e for e in after if e[0] == "block"], "no block after the stopped status"
    assert [e for e in after if e[0] == "stats"][0][1]["running"] is False  # the final stats
    worker.clear()
    c.start()  # same settings: no rebuild, a fresh session counting from block 0
    worker.until(lambda: c.status == "running" and len(worker.of("block")) >= 1, what="a restart")
    assert worker.of("block")[0][1] == 0 and ("status", "loading") not in worker.events


def test_a_new_session_never_plays_what_the_previous_one_left_unread(worker):
    """A session stopped while its output was not read leaves audio in the ring; the next start skips it, so the
    first audio read is the new session's block 0 (same settings and seed: the same samples as the first session's)."""
    c = worker.client
    worker.clear()
    c.start()
    worker.until(lambda: c.status == "running" and len(worker.of("block")) >= 2, what="generating")
    worker.until(lambda: worker.samples >= 4096, what="the first block's audio")
    first = np.concatenate(worker.audio)[:4096]
    # the worker writes a block's audio before it sends the block's event, so an event is no sign of unread audio
    # (the pump may already have read it): wait for the ring itself to hold audio nobody read
    wait_for(lambda: c.poll() is not None and c._out.available > 0, what="audio nobody reads")
    c.stop()
    events = []
    wait_for(lambda: events.extend(c.poll()) or c.status == "stopped", what="stopped")
    assert c._out.available > 0, "the stopped session left audio unread"
    worker.clear()
    c.start()  # same settings and seed: a fresh session
    worker.until(lambda: worker.samples >= 4096, what="the new session's audio")
    second = np.concatenate(worker.audio)[:4096]
    assert np.abs(first).max() > 0 and np.array_equal(second, first), (np.abs(first).max(), np.abs(second).max())


def test_bad_commands_are_answered_with_errors_and_the_worker_goes_on(worker):
    c = worker.client
    if c.status != "running":  # an earlier test that failed midway must not fail this one too
        c.start()
        worker.until(lambda: c.status == "running", what="running")
    worker.clear()
    for bad in [("dance",), "start", (), ("prompt",), ("prompt", 3), ("start", "fast"),
                ("controls", np.zeros((5, 3))), ("stop", 1, 2)]:
        c._send(bad)
    worker.until(lambda: len(worker.of("error")) >= 8, what="8 error events")
    errors = [e[1] for e in worker.of("error")]
    assert "unknown command 'dance'" in errors[0] and "malformed command" in errors[1]
    assert all("\n" not in e for e in errors)
    assert "(frames, 4)" in errors[6]
    n = len(worker.of("block"))
    worker.until(lambda: len(worker.of("block")) >= n + 2, what="blocks after the bad commands")
    assert c.status == "running" and c.alive


def test_a_killed_worker_is_reported_and_restarts_warm(worker):
    c = worker.client
    prompt = c.config.prompt
    os.kill(c.pid, signal.SIGKILL)
    worker.until(lambda: c.status == "crashed", what="crashed")
    assert c.error == "the generation worker exited with code -9; start again to restart it"
    c.poll()  # polling a dead pipe again is harmless
    worker.clear()
    c.start()  # start after a crash: a fresh worker, warm, then the session
    assert c.status == "loading"
    worker.until(lambda: c.status == "running" and worker.samples > 0, timeout=60, what="audio after restart")
    assert c.error is None and c.config.prompt == prompt  # the settings survive the crash


def test_close_ends_the_worker_and_unlinks_the_rings(worker):
    c = worker.client
    pid, names = c.pid, [c._in.name, c._out.name]
    c.close()
    c.close()  # idempotent
    assert c.status == "closed" and not c.alive and gone(pid)
    for name in names:
        with pytest.raises(FileNotFoundError):
            ShmRing.attach(name)
    assert c.poll() == [] and len(c.read_output()) == 0
    with pytest.raises(ValueError, match="closed"):
        c.start()


# ---- workers on their own -------------------------------------------------------------------------------------
def test_a_worker_that_fails_to_load_says_why(tiny_ckpt, tmp_path):
    from lmdm.checkpoint import save_checkpoint
    from lmdm.live.worker import WorkerClient

    path = save_checkpoint(tmp_path / "ckpt", tiny_ckpt.model, tiny_ckpt.codec)
    (path / "model.safetensors").write_bytes(b"not weights")
    with WorkerClient(path, gen_config(), preload_text_encoder=False) as c:
        assert not c.wait_ready(60)
        assert c.status == "crashed"
        assert c.error.startswith("the generation worker exited with code 1 (CheckpointError: ")
        assert "corrupt" in c.error and c.error.endswith("; start again to restart it")


def test_the_worker_exits_when_its_parent_dies(tiny_ckpt, tmp_path):
    from lmdm.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "ckpt", tiny_ckpt.model, tiny_ckpt.codec)
    pid_file = tmp_path / "worker.pid"
    code = textwrap.dedent(f"""
        import os, sys
        from lmdm.live.worker import WorkerClient
        from tests.test_worker import gen_config
        if __name__ == "__main__":
            c = WorkerClient({str(path)!r}, gen_config(), preload_text_encoder=False)
            c.wait_ready(60)
            open({str(pid_file)!r} + ".tmp", "w").write(f"{{c.pid}} {{c.status}}")
            os.rename({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
            os._exit(0)  # no clean-up at all, like a SIGKILL of the kernel
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and pid_file.exists(), r.stderr
    pid, status = pid_file.read_text().split()
    assert status == "ready"
    wait_for(lambda: gone(int(pid)), timeout=5, what=f"worker {pid} to exit after its parent died")


def test_views_of_output_and_input_follow_each_block_event():
    """The reporter's view path, in this process with a stand-in for ``lmdm.live.view.block_view`` (the worker
    imports the real one when it exists): an output view, an input view in jam mode, and a failing view that
    costs an error event but never the block event."""
    from lmdm.live.worker_process import Worker
    from lmdm.streaming.threads import LIVE_POLICY

    here, there = mp.Pipe()
    rings = [ShmRing.create(16), ShmRing.create(16)]
    try:
        w = Worker(there, rings[0].name, rings[1].name, gen_config(), LIVE_POLICY, torch_preloaded=False)
        w.block_view = lambda n, x, codec, source, seam_s: (
            {"block": n, "source": source, "n": len(x), "seam_s": seam_s}, x.tobytes())
        w.send_block(3, {"block": 3}, np.ones(4, np.float32), np.zeros(2, np.float32), None, 0.25)
        got = [here.recv() for _ in range(3)]
        assert got == [("block", 3, {"block": 3}),
                       ("view", {"block": 3, "source": "output", "n": 4, "seam_s": 0.25},
                        np.ones(4, np.float32).tobytes()),  # the input's chunk begins at its block's seam
                       ("view", {"block": 3, "source": "input", "n": 2, "seam_s": 0.0},
                        np.zeros(2, np.float32).tobytes())]

        def broken(n, x, codec, source, seam_s):
            raise ValueError("no pixels")

        w.block_view = broken
        w.send_block(4, {"block": 4}, np.ones(4, np.float32), None, None, 0.0)
        assert here.recv() == ("block", 4, {"block": 4})
        assert here.recv() == ("error", "block 4 output view failed: ValueError: no pixels")
        assert not here.poll(0.1)
        w.shutdown()
    finally:
        for ring in rings:
            ring.close()
