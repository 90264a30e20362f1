"""``lmdm eval``: the measurement suite (level, notes, distribution, adherence) with calibration rows."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from lmdm.audio.griffinlim import PHASE_INITS
from lmdm.cli.options import add_device_option, add_precision_option, add_sampler_options, sampler_config, use_device
from lmdm.errors import UsageError

GUARDED = " + level guard"  # a report row's name suffix for a checkpoint streamed through its level guard


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``eval`` (sampler defaults: each checkpoint's own, as ``generate``)."""
    e = sub.add_parser("eval", help="measure checkpoints against real music: level, notes, distribution, adherence")
    e.add_argument("--checkpoint", nargs="*", default=None, metavar="DIR",
                   help="checkpoint folders to measure (default: the bundled one)")
    e.add_argument("--prompts", default=None, help="text file, one prompt per line (default: validation captions)")
    e.add_argument("--seconds", type=float, default=None, help="length of each stream (default 30; quick 10)")
    e.add_argument("--seeds", type=int, default=None, help="streams per prompt (default 3; quick 1)")
    e.add_argument("--window", type=float, default=None, help="window length in seconds (default 10; quick 5)")
    e.add_argument("--data", default="data/music", help="built data set: train = reference, val = real rows")
    e.add_argument("--quick", action="store_true", help="a small run (CI, notebooks): a few minutes on 2 cores")
    e.add_argument("--json", default=None, help="also write the whole report to this JSON file")
    e.add_argument("--plots", default=None, metavar="DIR", help="write per-lens bar plots with CIs here")
    e.add_argument("--transcriber", default=None, help="transcriber folder (default: the bundled one)")
    e.add_argument("--gl-iters", type=int, default=None, metavar="N",
                   help="Griffin-Lim iterations of every decode, the systems' and the ceiling rows' (default: the "
                        "codec's); compares decoder settings with every lens")
    e.add_argument("--gl-init", choices=PHASE_INITS, default=None,
                   help="Griffin-Lim's starting phase of every decode (default: the codec's, gradient)")
    e.add_argument("--level-guard", action="store_true",
                   help="stream every checkpoint through its level guard (lmdm.streaming.level_guard; rows named "
                        "'NAME + level guard'; the sketch rows stream without it)")
    add_sampler_options(e, from_checkpoint=True, seed=0)
    add_device_option(e)
    add_precision_option(e, default="float32")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Measure the checkpoints and the calibration rows; print the tables (and write JSON and plots).

    Raises:
        UsageError: ``--seconds``/``--seeds``/``--gl-iters`` out of range, a checkpoint whose codec differs from the embedder's,
            a prompts file with no prompt, an unwritable ``--json``, ``--level-guard`` with a checkpoint that stores
            no level ceiling.
        DataError: ``--data`` has no usable train or validation split.
        CheckpointError, EmbedderError, TranscriberError: a model folder is missing or corrupt.
    """
    from tqdm.auto import tqdm

    from lmdm.audio.codec import mel_settings
    from lmdm.checkpoint import load_checkpoint
    from lmdm.control.evaluate import evaluate as evaluate_sketches
    from lmdm.eval.suite import EvalConfig, evaluate, format_table, plot_report
    from lmdm.eval.transcriber import load_transcriber
    from lmdm.eval.windows import read_prompts, validation_prompts
    from lmdm.metrics.embedder import default_embedder_path, load_embedder
    from lmdm.model.precision import resolve_precision, with_precision
    from lmdm.streaming.generate import check_seconds, generate

    if args.json:
        from lmdm.audio.io import check_writable

        check_writable(args.json)
    if args.seconds is not None:
        check_seconds(args.seconds)
    if args.gl_iters is not None and args.gl_iters < 1:
        raise UsageError(f"--gl-iters must be a whole number >= 1 (Griffin-Lim iterations), got {args.gl_iters}")
    changes = {k: v for k, v in (("seconds", args.seconds), ("seeds", args.seeds), ("window_s", args.window))
               if v is not None}
    sampler = sampler_config(args)
    use_device(args)  # the checkpoints' models run there; the codec, embedder and transcriber stay on the CPU
    cfg = (EvalConfig.quick if args.quick else EvalConfig)(data=args.data, sampler=sampler, **changes)
    if not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data}: no such folder; build one with `lmdm data build --out {args.data}`")
    prompts = read_prompts(args.prompts) if args.prompts else validation_prompts(cfg.data, cfg.n_prompts, cfg.seed)
    embedder, _ = load_embedder(default_embedder_path())
    emb_codec = json.loads((default_embedder_path() / "config.json").read_text())["codec"]
    systems, info, sketches, latents, guards = {}, {}, {}, {}, {}
    for path in args.checkpoint or [None]:
        ckpt = load_checkpoint(path)
        own = sampler_config(args, ckpt.info)  # each checkpoint with its own sampler unless the options say
        ckpt.model = with_precision(ckpt.model, args.precision)
        decoding = {k: v for k, v in (("gl_iters", args.gl_iters), ("gl_init", args.gl_init)) if v is not None}
        if decoding:  # decoding settings, not the mel representation: checked by CodecConfig
            ckpt.codec = ckpt.codec.with_decoding(**decoding)
        if mel_settings(dataclasses.asdict(ckpt.codec.cfg)) != mel_settings(emb_codec):
            raise UsageError(f"checkpoint {ckpt.path} uses another mel codec than the embedder and the data set "
                             f"({dataclasses.asdict(ckpt.codec.cfg)} vs {emb_codec}); the lenses cannot compare them")
        name = system_name(Path(ckpt.path), [n.removesuffix(GUARDED) for n in systems])
        if ckpt.codec.autoencoder is not None:
            latents[f"{name}'s latent"] = ckpt.codec
        guard = None
        if args.level_guard:
            from lmdm.streaming.level_guard import checkpoint_guard

            name += GUARDED
            guard = guards[name] = checkpoint_guard(ckpt)

        def gen(prompt: str, seed: int, ckpt=ckpt, own=own, guard=guard) -> object:
            return generate(ckpt, prompt, cfg.seconds, dataclasses.replace(own, seed=seed), block_filter=guard).audio

        systems[name] = gen
        if cfg.sketch_n:
            sketches[name] = lambda ckpt=ckpt: [r["correlation"] for r in evaluate_sketches(
                ckpt, cfg.data, cfg.sketch_n, cfg.sketch_seconds, progress=False)["results"]]
        info[name] = {"checkpoint": str(ckpt.path), "sampler": dataclasses.asdict(own),
                      "gl_iters": ckpt.codec.cfg.gl_iters, "gl_init": ckpt.codec.cfg.gl_init,
                      "precision": resolve_precision(args.precision)}
    transcriber = load_transcriber(args.transcriber)
    bar = tqdm(desc="lmdm eval", unit="stage", disable=args.quiet)

    def progress(msg: str) -> None:
        bar.set_postfix_str(msg[:60])
        bar.update(1)

    report = evaluate(systems, prompts, cfg, ckpt.codec.cfg, embedder, transcriber.transcribe, progress, info,
                      sketches, latents, ckpt.model.cfg.block_frames)
    bar.close()
    # of every decode: the systems' and the ceiling rows'
    report["decoder"] = {"gl_iters": ckpt.codec.cfg.gl_iters, "gl_init": ckpt.codec.cfg.gl_init}
    report["transcriber"] = {k: v for k, v in (transcriber.info.get("eval") or {}).items() if k != "per_work"}
    if guards:  # how often each guard acted, over all its streams
        report["level_guard"] = {name: g.summary() for name, g in guards.items()}
    print(format_table(report))
    for name, g in report.get("level_guard", {}).items():
        print(f"level guard of {name}: {g['cut_blocks']} of {g['blocks']} blocks turned down, the most by "
              f"{g['max_cut_db']:.1f} dB")
    if args.plots:
        for p in plot_report(report, args.plots):
            print(f"plot: {p}")
    if args.json:
        from lmdm.atomic import write_text

        write_text(args.json, json.dumps(report, indent=1, default=float))
        print(f"wrote {args.json}")
    return 0


def system_name(path: Path, taken) -> str:
    """A report row's name for a checkpoint folder: its name, or its run's for a run's ``final`` export
    (``runs/ablation/X/final`` -> ``X``), made unique among ``taken`` with ``#2``, ``#3``..."""
    name = path.parent.name if path.name == "final" and path.parent.name else path.name
    unique, k = name, 2
    while unique in taken:
        unique, k = f"{name}#{k}", k + 1
    return unique
