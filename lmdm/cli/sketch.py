"""``lmdm sketch``: render a drawn melody sketch with a prompt and report how closely the output follows it."""
from __future__ import annotations

import argparse
import math

from lmdm.cli.options import add_sampler_options, sampler_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``sketch`` (sampler defaults: 8 ping-pong steps, CFG 5.5 over prompt and sketch)."""
    sk = sub.add_parser("sketch", help="render a drawn melody sketch (JSON strokes) with a prompt")
    sk.add_argument("sketch", help="sketch JSON: {duration, pitch_range, scale, strokes: [[[seconds, height], ...]]}")
    sk.add_argument("--prompt", default="solo flute", help="text prompt (timbre, style)")
    sk.add_argument("--out", default="sketch.wav")
    sk.add_argument("--seconds", type=float, default=None, help="length (default: the sketch's duration)")
    add_sampler_options(sk, steps=8, sampler="pingpong", cfg_scale=5.5, seed=0,
                        help={"cfg_scale": "guidance over prompt and sketch (default %(default)s)"})
    sk.add_argument("--checkpoint", default=None)
    sk.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Render the sketch into ``--out``; prints the contour correlation (in [-1, 1], or n/a) and the RTF.

    Raises:
        SketchError: the sketch file is missing or invalid.
        AudioError: ``--out`` cannot be written.
    """
    from lmdm.audio.io import check_writable, save_audio
    from lmdm.checkpoint import load_checkpoint
    from lmdm.control.evaluate import render_sketch
    from lmdm.control.sketch import load_sketch
    from lmdm.streaming.generate import check_seconds

    sketch = load_sketch(args.sketch)
    seconds = check_seconds(args.seconds if args.seconds is not None else (sketch.duration or 0.0))
    out = check_writable(args.out)
    sampler = sampler_config(args)
    ckpt = load_checkpoint(args.checkpoint)
    result = render_sketch(ckpt, sketch, args.prompt, seconds, sampler)
    save_audio(out, result.audio, result.sample_rate)
    corr = ("n/a (nothing drawn or nothing tracked)" if math.isnan(result.correlation)
            else f"{result.correlation:.3f}")
    print(f"wrote {out} ({seconds:.2f} s); drawn contour vs pitch tracked from the output (pYIN): correlation {corr}")
    print(f"real-time factor {result.rtf:.3f}")
    return 0
