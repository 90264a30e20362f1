"""``lmdm jam``: the generative delay; answer a recording chunk by chunk as if live."""
from __future__ import annotations

import argparse

from lmdm.cli.options import add_device_option, add_precision_option, add_sampler_options, sampler_config, use_device
from lmdm.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``jam`` (sampler defaults: 4 ping-pong steps, no guidance, to fit the latency margin)."""
    j = sub.add_parser("jam", help="the generative delay: answer a recording, chunk by chunk as if live")
    j.add_argument("--input", required=True, help="audio file to play into the model (any rate, mono or stereo)")
    j.add_argument("--prompt", default="string ensemble", help="the answer's timbre and style")
    j.add_argument("--out", default="jam.wav", help="the answer, aligned with the input")
    j.add_argument("--mix", default=None, help="also write a stereo mix (input left, answer right)")
    add_sampler_options(j, steps=4, sampler="pingpong", cfg_scale=1.0, seed=0, help={
        "steps": "denoising steps per block (default %(default)s: fits the 330 ms margin on 2 cores, "
                 "also beside a busy process)"})
    j.add_argument("--margin", type=float, default=None,
                   help="compute margin in seconds (latency = block + margin; default: EngineConfig's, 0.33, "
                        "of which the streaming decoder holds back 0.068)")
    j.add_argument("--tracker", default="yin", choices=["yin", "pyin"])
    j.add_argument("--checkpoint", default=None)
    j.add_argument("--level-guard", action="store_true",
                   help="turn down any answering block louder than the training data's loudest 0.4 s (or with a 16 ms "
                        "frame above its 99.9th percentile) before the stream caches it "
                        "(lmdm.streaming.level_guard; off by default)")
    add_device_option(j)
    add_precision_option(j)
    j.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Play ``--input`` into the engine; writes the answer (and the stereo mix) and prints delay and latency.

    Raises:
        UsageError: the input holds no audio.
        AudioError: ``--input`` cannot be read or ``--out``/``--mix`` cannot be written.
    """
    from lmdm.audio.io import check_writable, load_audio, save_audio
    from lmdm.checkpoint import load_checkpoint
    from lmdm.live.engine import EngineConfig
    from lmdm.live.jam import jam
    from lmdm.streaming.threads import WORKER_POLICY, use_live_threads

    use_device(args)
    out = check_writable(args.out)
    mix = check_writable(args.mix) if args.mix else None
    margin = EngineConfig.margin_s if args.margin is None else args.margin
    cfg = EngineConfig(mode="jam", prompt=args.prompt, sampler=sampler_config(args), margin_s=margin,
                       tracker=args.tracker, precision=args.precision, level_guard=args.level_guard)
    use_live_threads(WORKER_POLICY)  # the live jam's thread policy (lmdm.streaming.threads), measured by lmdm bench
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
    print(f"generative delay {s['delay_ms']:.0f} ms (one block + {1000 * cfg.margin_s:.0f} ms margin): the answer to "
          f"what you play is heard that much later")
    print(f"latency (input heard -> answer available): mean {s['latency_ms_mean']:.0f} ms, max "
          f"{s['latency_ms_max']:.0f} ms; real-time factor {s['rtf']:.3f}; underruns {s['underruns']} of "
          f"{s['blocks']} blocks")
    if result.level_guard is not None:
        g = result.level_guard
        print(f"level guard: {g['cut_blocks']} of {g['blocks']} blocks turned down, the most by "
              f"{g['max_cut_db']:.1f} dB")
    return 0
