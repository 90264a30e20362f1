"""Are a stream's clipped peaks the decoder's phase, or the magnitudes the model made? Streams a prompt (as
``lmdm generate`` does, without decoding), then decodes one stretch of its latents with several Griffin-Lim
settings (``lmdm.audio.decoder.StreamingDecoder``, block by block) and prints, per setting, the clipped samples
(at or above full scale), the peak, the loudness (pyloudnorm, ``lmdm.eval.level``) and the crest factor (true peak
minus LUFS). If more iterations or another starting phase take the peaks away, they were the phase's; if not, they
are in the magnitudes.

    python scripts/decoder_peaks.py --seconds 480 505

On ``lmdm-small-arc`` v4 (4 steps, no guidance, the drift study's clarinet folk song, seed 0, the minute where its
10-minute stream clips; 2 min at one thread): 16 iterations from the gradient phase (``lmdm generate``'s) 36 clipped
samples, crest 20.8 dB; 32 from random phase (the drift study's) 37, 21.4 dB; 64 and 128 from the gradient phase 50
and 44, 21.0 and 20.4 dB; 200 from random phase 41, 20.1 dB. Real clarinet through the same latent and decoder:
12.5-15.0 dB. The peaks stay: a loud 2.0-2.2 kHz tone whose 16 ms frames reach -4 dBFS RMS.

Last, it prints the level (``lmdm.train.arc.level.frame_level``, normalised units) of each 16 ms mel frame that
holds a clipped sample of the drift study's decoder (32 iterations, random phase), beside the checkpoint's stored
frame ceiling (the training split's 99.9th percentile, ``info["frame_level_ceiling"]``) and, with ``--data``, the
training split's loudest frame (a minute more to decode it). On ``lmdm-small-arc`` v5 (same prompt, seed and
stretch, with ``--data data/music``; 33 min at low priority beside two other jobs): no clipped sample with any
decoder (peak 0.77-0.89, -18.3 LUFS, crest 16.1-17.3 dB); its frames' median level 2.18 and loudest 2.66, under the
stored ceiling 2.68; the data's loudest frame 3.00. v5's clarinet clips elsewhere (the drift study's minutes).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

PROMPT = "A moderate folk song in F major, 3/4 time at 88 BPM, played on clarinet."
DECODERS = ((16, "gradient"), (32, "random"), (64, "gradient"), (128, "gradient"), (200, "random"))


def main() -> None:
    from lmdm.audio.decoder import StreamingDecoder, decode_in_blocks
    from lmdm.checkpoint import load_checkpoint
    from lmdm.eval.level import level
    from lmdm.streaming.generate import stream_latents
    from lmdm.streaming.streamer import SamplerConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default="data/checkpoints/lmdm-small-arc")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, nargs=2, default=(480.0, 505.0), metavar=("FROM", "TO"),
                    help="the stretch to decode, seconds from the stream's start (it is streamed up to TO)")
    ap.add_argument("--data", default=None, help="a data folder: also print its training split's loudest frame")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    start, end = args.seconds
    if not 0 <= start < end:
        ap.error(f"--seconds needs 0 <= FROM < TO, got {start} {end}")
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    z = stream_latents(ckpt, args.prompt, end, SamplerConfig(steps=args.steps, cfg_scale=args.cfg, seed=args.seed))
    B = ckpt.model.cfg.block_frames
    a, b = int(start * ckpt.codec.frame_rate) // B * B, z.shape[0] // B * B
    print(f"{args.checkpoint}, {args.steps} steps, CFG {args.cfg}, seed {args.seed}: {args.prompt!r}, "
          f"{a / ckpt.codec.frame_rate:.1f}-{b / ckpt.codec.frame_rate:.1f} s")
    for iters, init in DECODERS:
        codec = ckpt.codec.with_decoding(gl_iters=iters, gl_init=init)
        y = decode_in_blocks(StreamingDecoder(codec, seed=0), z[a:b], B)
        lv = level(y, codec.sample_rate)
        print(f"Griffin-Lim {iters:3d} from {init:8s} phase: {int((np.abs(y) >= 1).sum()):4d} clipped samples, "
              f"peak {np.abs(y).max():.2f}, {lv.lufs:.1f} LUFS, crest {lv.true_peak_dbtp - lv.lufs:.1f} dB")
        if (iters, init) == (32, "random"):
            clipped_at = np.flatnonzero(np.abs(y) >= 1)
    frame_levels(ckpt, z, a, b, clipped_at, args.data)


def frame_levels(ckpt, z: torch.Tensor, a: int, b: int, clipped_at: np.ndarray, data: str | None) -> None:
    """Print the frame level of the mel frames of latent frames ``a:b`` of ``z`` ``(frames, channels)`` that hold
    the samples ``clipped_at`` (indices into the decoded stretch), beside the data's frame ceilings."""
    from lmdm.streaming.level_guard import latent_set_ceiling
    from lmdm.train.arc.level import DecodedMel, frame_level

    mel = DecodedMel(ckpt.codec)
    back = min(a, ckpt.codec.decoder_context)  # decode with the look-back the stream's decoder had
    with torch.no_grad():
        levels = frame_level(mel(z[a - back : b].float()[None])[:, back * mel.patch :], mel.std, 1)[0].numpy()
    frames = np.unique(clipped_at // ckpt.codec.cfg.hop)
    frames = frames[frames < len(levels)]
    print(f"{len(clipped_at)} clipped samples (32 iterations, random phase) in {len(frames)} of {len(levels)} mel "
          f"frames; their frame levels: " + " ".join(f"{v:.2f}" for v in np.sort(levels[frames])))
    print(f"the stretch's frame levels: median {np.median(levels):.2f}, loudest {levels.max():.2f}; stored frame "
          f"ceiling (the data's 99.9th percentile): {ckpt.info.get('frame_level_ceiling', float('nan')):.2f}")
    if data:
        from lmdm.train.dataset import encode_latent_set, load_latent_set

        latents = encode_latent_set(load_latent_set(data, ckpt.codec.cfg), ckpt.codec)
        print(f"the training split's loudest frame: {latent_set_ceiling(ckpt.codec, latents, 1.0, frames=1):.2f}")


if __name__ == "__main__":
    main()
