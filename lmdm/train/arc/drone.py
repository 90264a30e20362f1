"""Drone contexts and the loop-gain term of ARC-Forcing: a streaming student must not play back louder a low note
it reads from its own KV cache.

Why: every runaway traced in this project's long streams (README, "What a runaway is") is one bass note that grows
block by block, about +5 dB a 1.024 s block, until the stream clips: the student reads a loud drone from its cache
and writes a louder one. Measured with ``scripts/loop_gain.py`` (README, "The runaway's loop gain"), a drone in the
context comes back +1.6 dB a block louder from the base model and +2.4 to +5.9 dB from 13 of 15 ARC students, and
the students with the highest gain are the ones whose studies run away (Spearman 0.60 over 15). The level anchor and
the ceilings (``lmdm.train.arc.level``) hold the *mean* level and the loudest passages of what the student writes;
none of them sees the drone state or the gain of the loop, and an own stream meets a drone only when it drifts into
one, which 600 iterations seldom do.

So an own-stream iteration (``lmdm.train.arc.trainer.own_stream_iteration``, ``ARCConfig.own_stream_drone_p``) may
put a drone into a stream's context (:func:`with_drone`: a sustained low note with two harmonics, held over every
frame of the context at up to the context's whole level, mixed into its decoded mel and re-encoded) and train the student with
:func:`loop_gain_loss`, a hinge on the bass level of what it writes after that context above the context's own: the
loop gain of a feedback loop kept at or below ``margin`` dB a rollout (0 dB: the drone does not grow). Like the other
terms it sees the decoded mel, and its gradient reaches the student through the rollout's exit steps only.

This is the augmentation idea of Self-Forcing++ and GameNGen (train on the states inference drifts into; Cui et al.
2025, arXiv 2510.02283; Valevski et al. 2025, arXiv 2408.14837) aimed at the one state measured to run away, with a
hinge in place of a discriminator, since a 4-block critic has not been shown to see it (README, "Own streams in the
adversarial game").

Measured (README, "A loop-gain term in training"): with rising drones (``own_stream_drone_p`` 0.25,
``own_stream_drone_rise_db`` 8, ``loop_gain_weight`` 50) none of ten training seeds ran away over 10-minute streams,
against 7 of 21 for every recipe before (Fisher p = 0.066); seed 7 of them is the bundled student v6
(``configs/arc.json``). Both halves are off in ``ARCConfig`` by default.

Units: bass levels are :func:`band_level`, the power of the decoded mel bands centred below ``below_hz`` over all
frames, in the codec's normalised log-mel units (``lmdm.train.arc.level``: ``g`` dB = ``g / (20 log10(e) std)``).
"""
from __future__ import annotations

import torch

from lmdm.train.arc.level import GAIN_UNITS_PER_DB, DecodedMel, momentary_level

#: a drone's harmonics: (multiple of the fundamental, level re. the fundamental in dB); an organ pedal note's shape
HARMONICS = ((1, 0.0), (2, -6.0), (3, -12.0))


def band_level(decoded: torch.Tensor, mel: DecodedMel, below_hz: float) -> torch.Tensor:
    """The power of the bands centred below ``below_hz`` over all frames (``lmdm.train.arc.level.momentary_level`` of
    those bands with one window as long as ``decoded``), differentiable.

    Args:
        decoded: ``(b, mel_frames, n_mels)`` normalised log-mel (``DecodedMel`` output).
        mel: the codec's :class:`DecodedMel` (its ``band_hz`` and ``std``).
        below_hz: band limit, Hz; ``inf`` = every band.

    Returns:
        ``(b,)`` float32, normalised log-mel units (multiply by ``std * 20 log10(e)`` for dB).

    Raises:
        ValueError: no band is centred below ``below_hz``, or ``decoded`` has no frames.
    """
    bands = mel.band_hz < below_hz
    if not bool(bands.any()):
        raise ValueError(f"no mel band is centred below {below_hz} Hz (the lowest is at {float(mel.band_hz[0]):.1f} Hz)")
    return momentary_level(decoded[..., bands], mel.std, decoded.shape[1])[:, 0]


@torch.no_grad()
def with_drone(latent: torch.Tensor, mel: DecodedMel, hz: torch.Tensor, db: torch.Tensor,
               rise_db: torch.Tensor | None = None, block_frames: int = 1) -> torch.Tensor:
    """The latent of the same music with a sustained low note added: decoded to normalised log-mel, the bands
    nearest ``hz`` and its harmonics (:data:`HARMONICS`) raised to at least the context's total level
    (:func:`band_level` over every band) plus ``db`` dB (minus each harmonic's offset) at the context's last frame,
    and ``rise_db`` dB less for each block before it (a crescendo, as a runaway's onset grows; 0 = steady),
    re-encoded. Bands already louder keep their value (the note is mixed in, not pasted over), the others are
    untouched.

    The reference is the whole context's level, not its bass: in the traced runaways the drone holds most of the
    power, its bass 20-40 dB above the real piece's bass and about level with everything else (measured on the
    loop-gain drones B and C, README "A loop-gain term in training"); ``db`` from about -12 (the onset, a note
    under the music) to 0 (the note as loud as all the rest) spans that.

    Args:
        latent: ``(b, frames, ch)`` latent frames (a context window).
        mel: the codec's :class:`DecodedMel`.
        hz: ``(b,)`` the note's fundamental per item, Hz (the measured runaways sit at 40-150 Hz).
        db: ``(b,)`` its level at the last frame re. the item's total level, dB.
        rise_db: ``(b,)`` how much it grows a block, dB (None: steady).
        block_frames: latent frames a block (the rise's unit).

    Returns:
        ``(b, frames, ch)`` float latent frames.

    Raises:
        ValueError: ``hz``, ``db`` or ``rise_db`` is not one value per item, or ``latent`` does not have the codec's
            channels.
    """
    b = latent.shape[0]
    if hz.shape != (b,) or db.shape != (b,) or (rise_db is not None and rise_db.shape != (b,)):
        raise ValueError(f"hz, db and rise_db must be one value per item, shape ({b},), got {tuple(hz.shape)}, "
                         f"{tuple(db.shape)} and {None if rise_db is None else tuple(rise_db.shape)}")
    decoded = mel(latent)
    ref = band_level(decoded, mel, float("inf"))  # (b,) the context's total level
    raised = decoded.clone()
    rows = torch.arange(b, device=decoded.device)
    ramp = torch.zeros(b, decoded.shape[1], device=decoded.device)  # dB re. the last frame's level
    if rise_db is not None:
        frames = torch.arange(decoded.shape[1], device=decoded.device)
        blocks_before_end = (decoded.shape[1] - 1 - frames) / (block_frames * mel.patch)
        ramp = -rise_db.to(decoded)[:, None] * blocks_before_end[None]
    for multiple, offset in HARMONICS:
        band = (mel.band_hz[None, :] - multiple * hz.to(mel.band_hz)[:, None]).abs().argmin(1)  # (b,)
        level = ref[:, None] + (db.to(ref)[:, None] + offset + ramp) * GAIN_UNITS_PER_DB / mel.std  # (b, frames)
        raised[rows, :, band] = torch.maximum(raised[rows, :, band], level)
    return mel.encode(raised)


def loop_gain_loss(written: torch.Tensor, context: torch.Tensor, mel: DecodedMel, below_hz: float = 150.0,
                   margin_db: float = 0.0) -> torch.Tensor:
    """Squared excess of the bass level the student wrote over its context's, beyond ``margin_db``:
    ``mean relu(band_level(written) - band_level(context) - margin)^2`` (normalised units). Zero while no item's
    written bass is louder than its context's by more than the margin; the gradient reaches ``written`` only (the
    context is the student's input).

    Args:
        written: ``(b, mel_frames, n_mels)`` decoded mel of the rolled-out blocks (with gradient).
        context: ``(b, ctx_mel_frames, n_mels)`` decoded mel of the context they continue (ARC passes its last
            block: a drone that grew through the context may go on at the level it reached, no louder).
        mel: the codec's :class:`DecodedMel`.
        below_hz: the bass limit, Hz.
        margin_db: the loop gain allowed, dB (0: the bass may not grow).

    Returns:
        scalar float32.
    """
    rise = band_level(written, mel, below_hz) - band_level(context, mel, below_hz).detach()
    return torch.relu(rise - margin_db * GAIN_UNITS_PER_DB / mel.std).pow(2).mean()
