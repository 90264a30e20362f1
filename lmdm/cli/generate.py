"""``lmdm generate``: stream music from a prompt into an audio file."""
from __future__ import annotations

import argparse
import math

from lmdm.cli.options import add_device_option, add_precision_option, add_sampler_options, sampler_config, use_device
from lmdm.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``generate`` (sampler defaults: the checkpoint's, ``info["sampler"]``; else 8 ping-pong steps,
    CFG 2)."""
    g = sub.add_parser("generate", help="stream music from a prompt into an audio file")
    g.add_argument("prompt", help='text prompt, e.g. "a slow Bach chorale on church organ" ("" = unconditional)')
    g.add_argument("--seconds", type=float, default=30.0, help="length in seconds (default 30)")
    g.add_argument("--out", default="out.wav", help="output file (.wav, .flac, .ogg)")
    add_sampler_options(g, from_checkpoint=True, seed=0)
    g.add_argument("--mask", default="block_causal", choices=["block_causal", "enc_dec", "outpainting"],
                   help="streamer: block_causal (LMDM, persistent KV cache), enc_dec, outpainting (baseline)")
    g.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled one)")
    g.add_argument("--level-guard", action="store_true",
                   help="turn down any block louder than the training data's loudest 0.4 s (or with a 16 ms frame "
                        "above its 99.9th percentile) before the stream caches it (lmdm.streaming.level_guard; "
                        "off by default: the model as it is)")
    add_device_option(g)
    add_precision_option(g)
    g.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate ``--seconds`` of audio into ``--out``; prints the real-time factor and the latencies.

    Raises:
        UsageError: ``--out`` does not end in .wav, .flac or .ogg.
        AudioError: ``--out`` cannot be written.
        CheckpointError: ``--checkpoint`` is missing or corrupt.
        UsageError: ``--level-guard`` with a checkpoint that stores no level ceiling.
    """
    from lmdm.audio.io import check_writable, save_audio
    from lmdm.streaming.generate import check_seconds, generate

    seconds = check_seconds(args.seconds)
    sampler_config(args)  # the options given are checked before anything loads
    use_device(args)
    out = check_writable(args.out)
    if out.suffix.lower() not in (".wav", ".flac", ".ogg"):
        raise UsageError(f"--out must end in .wav, .flac or .ogg, got {out.name}")
    from tqdm.auto import tqdm

    from lmdm.checkpoint import load_checkpoint
    from lmdm.streaming.threads import use_live_threads

    use_live_threads()  # the thread policy of live use (lmdm.streaming.threads), measured by lmdm bench
    from lmdm.model.precision import resolve_precision, with_precision

    ckpt = load_checkpoint(args.checkpoint)
    sampler = sampler_config(args, ckpt.info)
    precision = resolve_precision(args.precision, next(ckpt.model.parameters()).device)
    ckpt.model = with_precision(ckpt.model, precision)
    guard = None
    if args.level_guard:
        from lmdm.streaming.level_guard import checkpoint_guard

        guard = checkpoint_guard(ckpt)
    n_blocks = -(-math.ceil(seconds * ckpt.codec.frame_rate) // ckpt.model.cfg.block_frames)
    bar = tqdm(total=n_blocks, desc="generating", unit="block", disable=args.quiet)
    gen = generate(ckpt, args.prompt, seconds, sampler, mask=args.mask, on_block=lambda i, a: bar.update(1),
                   block_filter=guard)
    bar.close()
    save_audio(out, gen.audio, gen.sample_rate)
    s = gen.stats.summary()
    print(f"wrote {out} ({gen.seconds:.2f} s, {gen.sample_rate} Hz) with the {args.mask} streamer, "
          f"{sampler.steps} {sampler.sampler} steps, CFG {sampler.cfg_scale}, eta {sampler.eta}, seed {sampler.seed}, "
          f"{precision} matrix multiplications")
    print(f"real-time factor {gen.rtf:.3f} (model {gen.model_s / gen.seconds:.3f}, "
          f"decoding {gen.decode_s / gen.seconds:.3f}; below 1 is faster than real time)")
    print(f"latency: bootstrap {s['bootstrap_ms']:.1f} ms, fused first step {s['fused_first_step_ms']:.1f} ms, "
          f"subsequent steps {s['subsequent_step_ms']:.1f} ms, per block {s['block_ms']:.1f} ms "
          f"({ckpt.model.cfg.block_frames / ckpt.codec.frame_rate * 1000:.0f} ms of audio)")
    if guard is not None:
        g = guard.summary()
        print(f"level guard: {g['cut_blocks']} of {g['blocks']} blocks turned down, the most by "
              f"{g['max_cut_db']:.1f} dB")
    return 0
