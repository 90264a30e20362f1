"""The loop gain of a streaming student: how much louder its next block plays than the context it reads.

Every runaway traced so far (README, "What a runaway is") is one bass note that grows block by block: the student
reads a loud bass from its KV cache and writes a louder one. That is a feedback loop, and a feedback loop has a gain
that can be measured without streaming ten minutes and waiting for a runaway: take windows of a real piece (the
context the cache holds, ``window_chunks`` blocks), play their bass ``g`` dB louder (``lmdm.train.arc.level.with_gain``,
the low shelf below ``--below-hz``, the same gain ARC's bass kicks apply), let the student write its next blocks after
them, and measure the bass level of what it wrote. Plotted against ``g`` this is the student's *return map*: a point
above the identity line is a block that plays its bass louder than the context it continued, a level that grows if the
stream feeds it back; below, one pulled back towards the data's level. A stable student crosses the identity once, near
0 dB, with slope below 1; a student whose map stays above the identity beyond some ``g`` has a loud state it does not
leave once a stream falls in.

Levels are the mean power of the decoded log-mel bands centred below ``--below-hz`` (dB, relative to the unkicked
context's same bands: 0 dB = the real piece's own bass), per block; ``loop gain`` is the first block's level minus the
context's (dB the next block adds). N = ``--windows`` context windows x ``--seeds`` sampler seeds per gain, with a
bootstrap 95% CI of the mean.

Usage:
    .venv/bin/python scripts/loop_gain.py data/checkpoints/lmdm-small-arc runs/arc-cn05-s5/final [--prompt 1]
        [--gains -10 0 10 20 30] [--blocks 2] [--steps 4] [--plot docs/loop-gain.png]
    .venv/bin/python scripts/loop_gain.py CKPT... --from-stream data/checkpoints/lmdm-small --stream-seed 9
        --at 7 8 9 10 11 12 --gains 0        # contexts at a traced drone's onset (README, "The runaway's loop gain")
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch


def band_level_db(latent: torch.Tensor, mel, below_hz: float) -> torch.Tensor:
    """Power of the bands centred below ``below_hz`` Hz over all frames, dB (up to the codec's fixed offset), per
    item: ``lmdm.train.arc.drone.band_level`` of the decoded latent (the loop-gain term's level), in dB.

    Args:
        latent: ``(b, frames, ch)`` latent frames.
        mel: the codec's ``lmdm.train.arc.level.DecodedMel``.
        below_hz: band limit, Hz; ``inf`` = every band.

    Returns:
        ``(b,)`` float64 dB.
    """
    from lmdm.train.arc.drone import band_level

    return band_level(mel(latent), mel, below_hz).double() * mel.std * 20 * math.log10(math.e)


def piece_windows(latents, prompt: str, frames: int, n: int) -> torch.Tensor:
    """``(n, frames, ch)`` latent windows spread evenly over the piece captioned ``prompt`` of ``latents`` (a
    ``lmdm.train.dataset.LatentSet`` in the checkpoint's latent: ``encode_latent_set``).

    Raises:
        SystemExit: no piece has that caption, or it is shorter than ``frames``.
    """
    for w in range(len(latents.work_ids)):
        start, count = int(latents.caption_start[w]), int(latents.caption_count[w])
        if prompt in latents.texts[start : start + count]:
            first, length = int(latents.work_start[w]), int(latents.work_frames[w])
            if length < frames:
                raise SystemExit(f"the piece captioned {prompt[:60]!r} has {length} frames, fewer than {frames}")
            offsets = np.linspace(0, length - frames, n).round().astype(int)
            return torch.stack([latents.latents[first + o : first + o + frames].float() for o in offsets])
    raise SystemExit(f"no piece of the data set is captioned {prompt[:60]!r}")


@torch.no_grad()
def return_map(ckpt, prompt: str, context: torch.Tensor, gains: list[float], seeds: list[int], steps: int,
               blocks: int, below_hz: float) -> dict[str, np.ndarray]:
    """The student's bass level after contexts played ``gains`` dB louder in the bass.

    Args:
        ckpt: a loaded checkpoint.
        prompt: the text the student streams on.
        context: ``(n, W*B, ch)`` clean latent context windows.
        gains: dB applied below ``below_hz`` to every context.
        seeds: sampler seeds (one batched stream each).
        steps: denoising steps (ping-pong, no CFG: the drift study's unguarded students).
        blocks: blocks written after each context.
        below_hz: the low shelf's limit, Hz.

    Returns:
        ``context_db`` ``(gains, n)``, ``block_db`` ``(gains, n * len(seeds), blocks)``: levels relative to the unkicked
        context's.
    """
    from lmdm.streaming.streamer import SamplerConfig, make_streamer
    from lmdm.text import encode_prompts
    from lmdm.train.arc.level import DecodedMel, with_gain

    mel = DecodedMel(ckpt.codec)
    n = len(context)
    ref = band_level_db(context, mel, below_hz)  # (n,) the unkicked contexts' own bass
    kicked = torch.cat([with_gain(context, mel, torch.full((n,), float(g)), below_hz) for g in gains])
    context_db = (band_level_db(kicked, mel, below_hz).view(len(gains), n) - ref).numpy()
    emb, has = encode_prompts(prompt)
    out = []
    for seed in seeds:
        streamer = make_streamer(ckpt.model, "block_causal", SamplerConfig(sampler="pingpong", steps=steps,
                                                                          cfg_scale=1.0, seed=seed), len(kicked))
        streamer.set_prompt(emb.expand(len(kicked), -1), has.expand(len(kicked)))
        streamer.reset(kicked)
        levels = [band_level_db(streamer.next_block(), mel, below_hz) for _ in range(blocks)]
        out.append((torch.stack(levels, dim=1).view(len(gains), n, blocks) - ref[None, :, None]).numpy())
    return {"context_db": context_db, "block_db": np.concatenate(out, axis=1)}


def mean_ci(x: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``x`` ``(n,)`` and its bootstrap 95% CI (``lmdm.eval.suite.mean_ci``) as ``(mean, low, high)``."""
    from lmdm.eval.suite import mean_ci as suite_mean_ci

    out = suite_mean_ci(x, n_boot, np.random.default_rng(seed))
    return out["mean"], out["ci"][0], out["ci"][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", default="data/music")
    ap.add_argument("--prompt", type=int, default=1,
                    help="index into the drift study's 4 validation prompts (1 = the choir chorale)")
    ap.add_argument("--gains", type=float, nargs="+", default=[-10, 0, 5, 10, 15, 20, 25, 30])
    ap.add_argument("--below-hz", type=float, default=150.0)
    ap.add_argument("--windows", type=int, default=6, help="context windows from the prompt's own piece")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--from-stream", default=None, metavar="CKPT",
                    help="take the contexts from this checkpoint's own stream on the prompt (e.g. a runaway's "
                         "onset) instead of the real piece")
    ap.add_argument("--stream-seed", type=int, default=0)
    ap.add_argument("--at", type=float, nargs="+", default=None,
                    help="with --from-stream: the stream times (s) the context windows end at")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    if args.from_stream and not args.at:
        raise SystemExit("--from-stream needs --at: the stream times (seconds) the context windows end at")
    if args.windows < 1 or args.seeds < 1 or args.blocks < 1 or args.steps < 1:
        raise SystemExit("--windows, --seeds, --blocks and --steps must be at least 1")
    from lmdm.checkpoint import load_checkpoint
    from lmdm.eval.windows import validation_prompts
    from lmdm.train.arc.level import DecodedMel

    prompts = validation_prompts(args.data, 4, 0)
    if not 0 <= args.prompt < len(prompts):
        raise SystemExit(f"--prompt must index the study's {len(prompts)} prompts (0..{len(prompts) - 1})")
    prompt = prompts[args.prompt]
    print(f"prompt: {prompt}")
    source = None
    if args.from_stream:
        from lmdm.streaming.generate import stream_latents
        from lmdm.streaming.streamer import SamplerConfig

        ckpt = load_checkpoint(args.from_stream)
        B, fr = ckpt.model.cfg.block_frames, ckpt.codec.cfg.frame_rate
        frames = ckpt.model.cfg.window_chunks * B
        ends = [int(round(t * fr / B)) * B for t in args.at]
        if min(ends) < frames:
            raise SystemExit(f"--at must leave a full context ({frames / fr:.1f} s) before each window's end")
        lat = stream_latents(ckpt, prompt, (max(ends) + args.blocks * B) / fr + 0.01,
                             SamplerConfig(sampler="pingpong", steps=args.steps, cfg_scale=1.0, seed=args.stream_seed))
        source = torch.stack([lat[e - frames : e + args.blocks * B].float() for e in ends])
        print(f"contexts: {args.from_stream}'s stream (seed {args.stream_seed}), windows ending at "
              + ", ".join(f"{e / fr:.1f}" for e in ends) + " s; the reference row is that stream's own next blocks")
    results, latent_sets = [], {}
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        frames = ckpt.model.cfg.window_chunks * ckpt.model.cfg.block_frames
        B = ckpt.model.cfg.block_frames
        if source is not None:
            windows = source
        else:
            from lmdm.train.dataset import encode_latent_set, load_latent_set

            if repr(ckpt.codec.cfg) not in latent_sets:  # the data set read once per codec configuration
                latent_sets[repr(ckpt.codec.cfg)] = load_latent_set(args.data, ckpt.codec.cfg, progress=False)
            latents = encode_latent_set(latent_sets[repr(ckpt.codec.cfg)], ckpt.codec)  # this checkpoint's latent
            windows = piece_windows(latents, prompt, frames + args.blocks * B, args.windows)
        context = windows[:, :frames]
        r = return_map(ckpt, prompt, context, args.gains, list(range(args.seeds)), args.steps, args.blocks,
                       args.below_hz)
        mel = DecodedMel(ckpt.codec)
        ref = band_level_db(context, mel, args.below_hz)
        real = np.stack([(band_level_db(windows[:, frames + k * B : frames + (k + 1) * B], mel, args.below_hz) - ref)
                         .numpy() for k in range(args.blocks)], axis=1)  # (windows, blocks): the piece itself
        name = Path(path).name if Path(path).name != "final" else Path(path).parent.name
        results.append((name, r, real))
        n = r["block_db"].shape[1]
        what = "the source stream" if source is not None else "the real piece"
        print(f"\n{name}: bass below {args.below_hz:g} Hz, dB re. the unkicked context's; N = {n} per gain "
              f"({len(windows)} windows x {args.seeds} seeds)")
        print(f"  {what}, its own next blocks after the unkicked context: " + " | ".join(
            "block {}: {:+.1f} [{:+.1f}, {:+.1f}]".format(k + 1, *mean_ci(real[:, k])) for k in range(args.blocks)))
        print("  context | " + " | ".join(f"block {k + 1} [95% CI]" for k in range(args.blocks)) + " | loop gain")
        for i, _ in enumerate(args.gains):
            ctx = float(r["context_db"][i].mean())
            cells = [mean_ci(r["block_db"][i, :, k]) for k in range(args.blocks)]
            print(f"  {ctx:+6.1f} | " + " | ".join(f"{m:+6.1f} [{lo:+.1f}, {hi:+.1f}]" for m, lo, hi in cells)
                  + f" | {cells[0][0] - ctx:+.1f}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cols = min(3, len(results))
        rows = math.ceil(len(results) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), sharex=True, sharey=True,
                                 squeeze=False)
        for ax, (name, r, real) in zip(axes.flat, results):
            ctx = r["context_db"].mean(axis=1)
            for k in range(r["block_db"].shape[2]):
                m = np.array([mean_ci(r["block_db"][i, :, k]) for i in range(len(ctx))])
                ax.errorbar(ctx, m[:, 0], yerr=[m[:, 0] - m[:, 1], m[:, 2] - m[:, 0]], marker="o", ms=3,
                            capsize=2, label=f"block {k + 1} after the context")
            ax.errorbar([0.0], [real[:, 0].mean()], yerr=[[real[:, 0].mean() - mean_ci(real[:, 0])[1]],
                        [mean_ci(real[:, 0])[2] - real[:, 0].mean()]], marker="s", color="black", capsize=2,
                        label=f"{what}'s own next block")
            lim = [ctx.min() - 5, ctx.max() + 5]
            ax.plot(lim, lim, color="grey", ls="--", lw=0.8, label="identity (level kept)")
            ax.set_title(name, fontsize=9)
            ax.grid(alpha=0.3)
        for ax in axes[-1]:
            ax.set_xlabel(f"context bass < {args.below_hz:g} Hz (dB re. unkicked)")
        for ax in axes[:, 0]:
            ax.set_ylabel("written bass (dB re. unkicked context)")
        for ax in list(axes.flat)[len(results):]:
            ax.set_visible(False)
        axes[0, 0].legend(fontsize=7, loc="upper left")
        source = (f"contexts from {args.from_stream}'s stream seed {args.stream_seed}" if args.from_stream
                  else "contexts from the real piece")
        fig.suptitle(f"return map of the bass level, {args.steps} steps, {source}: {prompt[:60]}...", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=80)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
