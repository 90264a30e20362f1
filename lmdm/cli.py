"""The ``lmdm`` command line: ``data build``, ``data example``, ``train``, ``generate``, ``bench``, ``sketch``,
``sketch-eval``, ``jam``, ``arc``, ``metrics train-embedder``, ``drift``.

Every subcommand turns bad input into one clear ``lmdm: error: ...`` line and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import warnings
from pathlib import Path


class UsageError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from lmdm.audio.io import AudioError
    from lmdm.checkpoint import CheckpointError
    from lmdm.config import ConfigError
    from lmdm.data.render import RenderError
    from lmdm.live.engine import InputError
    from lmdm.control.sketch import SketchError
    from lmdm.text import TextEncoderError
    from lmdm.train.dataset import DataError
    from lmdm.train.pretrain import TrainError
    from lmdm.train.arc.trainer import ARCError

    return (UsageError, ARCError, AudioError, CheckpointError, ConfigError, DataError, TrainError, TextEncoderError,
            RenderError, InputError, SketchError, FileNotFoundError, ValueError, TypeError, KeyError)


def _warn_line(message, category, filename, lineno, file=None, line=None):
    print(f"lmdm: warning: {message}", file=sys.stderr)


# ---- data build --------------------------------------------------------------------------------------------------
def cmd_data_build(args: argparse.Namespace) -> int:
    from lmdm.data.build import BuildConfig, build

    if not args.hours > 0:
        raise UsageError(f"--hours must be positive, got {args.hours}")
    cfg = BuildConfig(hours=args.hours, out=args.out, seed=args.seed, jobs=args.jobs, soundfont=args.soundfont,
                      max_seconds=args.max_seconds, work_ids=tuple(args.works or ()))
    report = build(cfg, progress=not args.quiet)
    print(report.summary())
    if report.failed:
        print(f"{report.failed} work(s) failed; see {Path(args.out) / 'failures.csv'}")
    print(f"manifest: {Path(args.out) / 'manifest.csv'}")
    return 0


def cmd_data_example(args: argparse.Namespace) -> int:
    from lmdm.data.example import build_example

    path = build_example(args.out)
    print(f"wrote {path}")
    return 0


# ---- train -------------------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from lmdm.config import load_json
    from lmdm.train.config import TrainConfig
    from lmdm.train.pretrain import train

    cfg = load_json(TrainConfig, args.config) if args.config else None
    if cfg is None and not args.resume:
        cfg = TrainConfig()
    overrides = {k: v for k, v in (("steps", args.steps), ("data", args.data), ("max_hours", args.max_hours)) if v is not None}
    result = train(cfg, resume=args.resume, progress=not args.quiet, run_dir=args.run_dir, overrides=overrides)
    val = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
    print(f"step {result.step}: train loss {result.train_loss:.4f}, validation loss {val}, "
          f"{result.hours:.2f} h of training; inference checkpoint: {result.final_dir}")
    return 0


# ---- generate ----------------------------------------------------------------------------------------------------
def cmd_generate(args: argparse.Namespace) -> int:
    from lmdm.audio.io import check_writable, save_audio
    from lmdm.streaming.generate import check_seconds, generate
    from lmdm.streaming.streamer import SamplerConfig

    seconds = check_seconds(args.seconds)
    sampler = SamplerConfig(steps=args.steps, sampler=args.sampler, cfg_scale=args.cfg, seed=args.seed)
    out = check_writable(args.out)
    if out.suffix.lower() not in (".wav", ".flac", ".ogg"):
        raise UsageError(f"--out must end in .wav, .flac or .ogg, got {out.name}")
    from tqdm.auto import tqdm

    from lmdm.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    n_blocks = -(-math.ceil(seconds * ckpt.codec.frame_rate) // ckpt.model.cfg.block_frames)
    bar = tqdm(total=n_blocks, desc="generating", unit="block", disable=args.quiet)
    gen = generate(ckpt, args.prompt, seconds, sampler, mask=args.mask, on_block=lambda i, a: bar.update(1))
    bar.close()
    save_audio(out, gen.audio, gen.sample_rate)
    s = gen.stats.summary()
    print(f"wrote {out} ({gen.seconds:.2f} s, {gen.sample_rate} Hz) with the {args.mask} streamer, "
          f"{args.steps} {args.sampler} steps, CFG {args.cfg}, seed {args.seed}")
    print(f"real-time factor {gen.rtf:.3f} (model {gen.model_s / gen.seconds:.3f}, "
          f"decoding {gen.decode_s / gen.seconds:.3f}; below 1 is faster than real time)")
    print(f"latency: bootstrap {s['bootstrap_ms']:.1f} ms, fused first step {s['fused_first_step_ms']:.1f} ms, "
          f"subsequent steps {s['subsequent_step_ms']:.1f} ms, per block {s['block_ms']:.1f} ms "
          f"({ckpt.model.cfg.block_frames / ckpt.codec.frame_rate * 1000:.0f} ms of audio)")
    return 0


# ---- bench -------------------------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from lmdm.bench.run import BenchConfig, format_report, run_bench

    cfg = BenchConfig.quick(checkpoint=args.checkpoint) if args.quick else BenchConfig(checkpoint=args.checkpoint)
    if args.json:
        from lmdm.audio.io import check_writable

        check_writable(args.json)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    result = run_bench(cfg, out_dir=args.out_dir, progress=log)
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


# ---- sketch ------------------------------------------------------------------------------------------------------
def cmd_sketch(args: argparse.Namespace) -> int:
    from lmdm.audio.io import check_writable, save_audio
    from lmdm.checkpoint import load_checkpoint
    from lmdm.streaming.generate import check_seconds
    from lmdm.control.sketch import load_sketch
    from lmdm.control.evaluate import render_sketch
    from lmdm.streaming.streamer import SamplerConfig

    sketch = load_sketch(args.sketch)
    seconds = check_seconds(args.seconds if args.seconds is not None else (sketch.duration or 0.0))
    out = check_writable(args.out)
    sampler = SamplerConfig(steps=args.steps, sampler=args.sampler, cfg_scale=args.cfg, seed=args.seed)
    ckpt = load_checkpoint(args.checkpoint)
    result = render_sketch(ckpt, sketch, args.prompt, seconds, sampler)
    save_audio(out, result.audio, result.sample_rate)
    corr = "n/a (nothing drawn or nothing tracked)" if result.correlation != result.correlation else f"{result.correlation:.3f}"
    print(f"wrote {out} ({seconds:.2f} s); drawn contour vs pitch tracked from the output (pYIN): correlation {corr}")
    print(f"real-time factor {result.rtf:.3f}")
    return 0


def cmd_sketch_eval(args: argparse.Namespace) -> int:
    import json

    from lmdm.checkpoint import load_checkpoint
    from lmdm.control.evaluate import evaluate

    if args.json:
        from lmdm.audio.io import check_writable

        check_writable(args.json)
    if args.n < 1 or not args.seconds > 0:
        raise UsageError("--n must be at least 1 and --seconds positive")
    ckpt = load_checkpoint(args.checkpoint)
    report = evaluate(ckpt, data_dir=args.data, n=args.n, seconds=args.seconds, prompt=args.prompt,
                      progress=not args.quiet)
    for kind, r in report["summary"].items():
        print(f"{kind:9s}: mean correlation {r['mean']:.3f} (median {r['median']:.3f}) over {r['n']} held-out sketches")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


# ---- jam ---------------------------------------------------------------------------------------------------------
def cmd_jam(args: argparse.Namespace) -> int:
    from lmdm.audio.io import check_writable, load_audio, save_audio
    from lmdm.checkpoint import load_checkpoint
    from lmdm.live.jam import jam
    from lmdm.live.engine import EngineConfig

    out = check_writable(args.out)
    mix = check_writable(args.mix) if args.mix else None
    cfg = EngineConfig(mode="jam", prompt=args.prompt, steps=args.steps, cfg_scale=args.cfg, seed=args.seed,
                       margin_s=args.margin, tracker=args.tracker)
    ckpt = load_checkpoint(args.checkpoint)
    audio = load_audio(args.input, ckpt.codec.sample_rate)
    if len(audio) == 0:
        raise UsageError(f"{args.input} holds no audio")
    result = jam(ckpt, audio, ckpt.codec.sample_rate, cfg)
    save_audio(out, result.output, result.sample_rate)
    if mix is not None:
        save_audio(mix, result.mix(), result.sample_rate)
    s = result.stats.summary()
    print(f"wrote {out}" + (f" and the stereo mix {mix} (input left, answer right)" if mix else ""))
    print(f"generative delay {s['delay_ms']:.0f} ms (one block + {1000 * args.margin:.0f} ms margin): the answer to "
          f"what you play is heard that much later")
    print(f"latency (input heard -> answer available): mean {s['latency_ms_mean']:.0f} ms, max "
          f"{s['latency_ms_max']:.0f} ms; real-time factor {s['rtf']:.3f}; underruns {s['underruns']} of "
          f"{s['blocks']} blocks")
    return 0


# ---- ARC-Forcing -------------------------------------------------------------------------------------------------
def cmd_arc(args: argparse.Namespace) -> int:
    from lmdm.train.arc.trainer import ARCConfig, arc_train
    from lmdm.config import load_json

    cfg = load_json(ARCConfig, args.config) if args.config else (None if args.resume else ARCConfig())
    overrides = {"steps": args.steps} if args.steps is not None else None
    r = arc_train(cfg, resume=args.resume, progress=not args.quiet, run_dir=args.run_dir, overrides=overrides)
    print(f"ARC-Forcing: {r.step} iterations in {r.hours:.2f} h; discriminator {r.disc_params / 1e6:.2f}M parameters; "
          f"last losses G {r.last.get('loss_g', float('nan')):.3f} D {r.last.get('loss_d', float('nan')):.3f} "
          f"contrastive {r.last.get('loss_c', float('nan')):.3f}; post-trained checkpoint: {r.final_dir}")
    return 0


# ---- metrics and drift -------------------------------------------------------------------------------------------
def cmd_train_embedder(args: argparse.Namespace) -> int:
    from lmdm.metrics.embedder import EmbedderConfig, train_embedder

    m = train_embedder(args.data, args.out, EmbedderConfig(steps=args.steps), progress=not args.quiet)
    print(f"validation accuracy: collection {m['val_collection_accuracy']:.3f} (majority class "
          f"{m['chance_collection']:.3f}), instrument {m['val_instrument_accuracy']:.3f} (majority "
          f"{m['chance_instrument']:.3f}) on {m['val_examples']} validation crops")
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    import json

    from lmdm.audio.io import check_writable
    from lmdm.metrics.report import drift_report, format_drift, plot_drift
    from lmdm.streaming.streamer import SamplerConfig

    from lmdm.metrics.embedder import default_embedder_path, load_embedder

    if not args.minutes > 0 or args.minutes > 60:
        raise UsageError(f"--minutes must be in (0, 60], got {args.minutes}")
    if not 0 < args.window <= args.minutes * 60:
        raise UsageError(f"--window must be positive and at most the stream ({args.minutes * 60:.0f} s), got {args.window}")
    if args.json:
        check_writable(args.json)
    load_embedder(default_embedder_path())  # fail now, not after minutes of streaming
    others = []
    for p in args.compare or []:
        try:
            others.append(json.loads(Path(p).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"--compare {p}: not a readable drift JSON file ({e})") from e
    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out-dir {out_dir} ({e})") from e
    sampler = SamplerConfig(steps=args.steps, sampler=args.sampler, cfg_scale=args.cfg, seed=args.seed)
    report = drift_report(args.checkpoint, args.minutes, args.prompt, sampler, data_dir=args.data,
                          window_s=args.window, label=args.label, progress=not args.quiet)
    print(format_drift(report))
    stem = Path(args.json).stem if args.json else "drift_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", report["label"]).strip("_")
    fig = plot_drift([report, *others], out_dir / f"{stem}.png")
    print(f"plot: {fig}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``lmdm`` argument parser with every subcommand."""
    p = argparse.ArgumentParser(prog="lmdm", description="Live Music Diffusion Models: streaming music "
                                "generation with block-wise KV caching, on a CPU.")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build the real-music training set").add_subparsers(dest="data_command", required=True)
    b = data.add_parser("build", help="render music21 corpus works to audio with FluidSynth")
    b.add_argument("--hours", type=float, default=10.0, help="hours of audio to build (default 10)")
    b.add_argument("--out", default="data/music", help="output folder (default data/music)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--jobs", type=int, default=2, help="worker processes")
    b.add_argument("--soundfont", default=None, help="General MIDI .sf2 (default: FluidR3_GM, else TimGM6mb)")
    b.add_argument("--max-seconds", type=float, default=90.0, help="crop longer works to this length")
    b.add_argument("--works", nargs="*", help="build exactly these work ids (e.g. bach__bwv269)")
    b.set_defaults(func=cmd_data_build)
    ex = data.add_parser("example", help="render the bundled example recording (a violin air, 12 s)")
    ex.add_argument("--out", default="data/examples/violin_air.flac")
    ex.set_defaults(func=cmd_data_example)

    t = sub.add_parser("train", help="train an LMDM (resumable)")
    t.add_argument("--config", help="training config JSON (see configs/); unknown keys are an error")
    t.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    t.add_argument("--run-dir", help="run folder (overrides the config's run_dir)")
    t.add_argument("--steps", type=int, help="override the number of steps")
    t.add_argument("--data", help="override the data folder")
    t.add_argument("--max-hours", type=float, help="stop after this many hours (with a checkpoint)")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="stream music from a prompt into an audio file")
    g.add_argument("prompt", help='text prompt, e.g. "a slow Bach chorale on church organ" ("" = unconditional)')
    g.add_argument("--seconds", type=float, default=30.0, help="length in seconds (default 30)")
    g.add_argument("--out", default="out.wav", help="output file (.wav, .flac, .ogg)")
    g.add_argument("--steps", type=int, default=8, help="denoising steps per block (default 8)")
    g.add_argument("--sampler", default="pingpong", choices=["euler", "pingpong"])
    g.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale (default 2)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--mask", default="block_causal", choices=["block_causal", "enc_dec", "outpainting"],
                   help="streamer: block_causal (LMDM, persistent KV cache), enc_dec, outpainting (baseline)")
    g.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled one)")
    g.set_defaults(func=cmd_generate)

    be = sub.add_parser("bench", help="measure outpainting, LMDM (enc-dec, block-causal) and an LMM side by side")
    be.add_argument("--quick", action="store_true", help="a fast, noisier run (CI, notebooks)")
    be.add_argument("--json", help="also write all numbers to this JSON file")
    be.add_argument("--out-dir", default="runs/bench", help="folder for the sweep figures (default runs/bench)")
    be.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled one)")
    be.set_defaults(func=cmd_bench)

    sk = sub.add_parser("sketch", help="render a drawn melody sketch (JSON strokes) with a prompt")
    sk.add_argument("sketch", help="sketch JSON: {duration, pitch_range, scale, strokes: [[[seconds, height], ...]]}")
    sk.add_argument("--prompt", default="solo flute", help="text prompt (timbre, style)")
    sk.add_argument("--out", default="sketch.wav")
    sk.add_argument("--seconds", type=float, default=None, help="length (default: the sketch's duration)")
    sk.add_argument("--steps", type=int, default=8)
    sk.add_argument("--sampler", default="pingpong", choices=["euler", "pingpong"])
    sk.add_argument("--cfg", type=float, default=5.5, help="guidance over prompt and sketch (default 5.5)")
    sk.add_argument("--seed", type=int, default=0)
    sk.add_argument("--checkpoint", default=None)
    sk.set_defaults(func=cmd_sketch)

    se = sub.add_parser("sketch-eval", help="contour-following correlation on held-out sketches")
    se.add_argument("--n", type=int, default=8, help="sketches of each kind (default 8)")
    se.add_argument("--data", default="data/music", help="data set whose validation melodies are traced")
    se.add_argument("--seconds", type=float, default=8.0)
    se.add_argument("--prompt", default="solo flute")
    se.add_argument("--json", default=None)
    se.add_argument("--checkpoint", default=None)
    se.set_defaults(func=cmd_sketch_eval)

    j = sub.add_parser("jam", help="the generative delay: answer a recording, chunk by chunk as if live")
    j.add_argument("--input", required=True, help="audio file to play into the model (any rate, mono or stereo)")
    j.add_argument("--prompt", default="string ensemble", help="the answer's timbre and style")
    j.add_argument("--out", default="jam.wav", help="the answer, aligned with the input")
    j.add_argument("--mix", default=None, help="also write a stereo mix (input left, answer right)")
    j.add_argument("--steps", type=int, default=4, help="denoising steps per block (default 4: fits the 100 ms margin on 2 cores)")
    j.add_argument("--cfg", type=float, default=1.0)
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--margin", type=float, default=0.1, help="compute margin in seconds (latency = block + margin)")
    j.add_argument("--tracker", default="yin", choices=["yin", "pyin"])
    j.add_argument("--checkpoint", default=None)
    j.set_defaults(func=cmd_jam)

    a = sub.add_parser("arc", help="ARC-Forcing post-training on the model's own rollouts")
    a.add_argument("--config", help="ARC config JSON (see configs/arc.json)")
    a.add_argument("--resume", action="store_true")
    a.add_argument("--run-dir", default=None)
    a.add_argument("--steps", type=int, default=None)
    a.set_defaults(func=cmd_arc)

    me = sub.add_parser("metrics", help="measurement tools").add_subparsers(dest="metrics_command", required=True)
    te = me.add_parser("train-embedder", help="train the audio classifier whose embedding the drift metrics use")
    te.add_argument("--data", default="data/music")
    te.add_argument("--out", default=None, help="default: data/checkpoints/embedder")
    te.add_argument("--steps", type=int, default=1500)
    te.set_defaults(func=cmd_train_embedder)

    d = sub.add_parser("drift", help="drift over a long stream: Frechet distance, loudness, flatness, ...")
    d.add_argument("--checkpoint", default=None)
    d.add_argument("--minutes", type=float, default=5.0)
    d.add_argument("--prompt", default="a slow Bach chorale on church organ")
    d.add_argument("--steps", type=int, default=8)
    d.add_argument("--sampler", default="pingpong", choices=["euler", "pingpong"])
    d.add_argument("--cfg", type=float, default=2.0)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--window", type=float, default=30.0, help="window length in seconds")
    d.add_argument("--data", default="data/music", help="data set whose validation split is the reference")
    d.add_argument("--label", default=None, help="name in tables and plots (default: from the checkpoint)")
    d.add_argument("--compare", nargs="*", help="earlier drift JSON files to overlay in the plot")
    d.add_argument("--json", default=None)
    d.add_argument("--out-dir", default="runs/drift")
    d.set_defaults(func=cmd_drift)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _warn_line
    try:
        return args.func(args)
    except _user_errors() as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"lmdm: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmdm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
