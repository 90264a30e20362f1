"""Level anchoring for ARC-Forcing: the generator matches real music's per-band level and spread of the decoded
mel spectrogram, what a listener hears.

Why: the adversarial game only asks the student to beat the current discriminator, and nothing in it ties the
level to the data: the first ``lmdm-small-arc`` came out about 14 dB louder than the data and clipped (issue 13).
The fix is feature matching (Salimans et al. 2016, "Improved Techniques for Training GANs", section 3.1: train the
generator to match the expected value of features of real data, not only to fool the discriminator), the term
audio GANs add next to their adversarial losses to stay anchored (MelGAN, Kumar et al. 2019, section 2.3, feature
matching; HiFi-GAN, Kong et al. 2020, section 2.3, mel-spectrogram and feature-matching losses), applied here to
the post-trained generator of ARC (Novack et al. 2025, arXiv 2505.08175), whose relativistic and contrastive
losses have no such term. The features are the simplest ones that carry level: per mel band, the mean and the
standard deviation over a batch of frames of the normalised log-mel, measured on the real continuations of the
same batch (the real data) and on the rollouts.

Units: the codec's normalised log-mel, ``(ln |mel| - mean) / std`` (``lmdm.audio.codec``; ``std = 2.5`` nats by
default). A gain of ``g`` dB on the audio adds ``g / (20 log10(e) std)`` to every band (``g / 21.7`` by
default), so a uniform level offset of ``g`` dB costs ``(g / 21.7)^2``: 0.42 for 14 dB.

**Momentary ceiling.** Band statistics and per-band ceilings let a passage be louder than anything in the data
while every band stays below its own loudest value: several bands near their tops at once. That is where the
long streams of ``lmdm-small-arc`` v4 clip: on a 4-minute choir-chorale stream, the 0.4 s windows that hold its
clipped samples sit at a level of 2.99 (median; normalised units, below), the training data's loudest 0.4 s at 2.80
and its 99.9th percentile at 2.60 (``scripts/clip_levels.py``). :func:`momentary_level` is the
level of what a listener hears over 0.4 s, the window of EBU R 128's momentary loudness (without its K-weighting:
mel power summed over bands), and :func:`momentary_ceiling_loss` costs only the windows above a high quantile of the
training data's (:func:`momentary_ceiling`; 0.999 by default, the level real music exceeds one window in a
thousand).

**Crest ceiling.** Streams can also clip at the data's loudness: the kicked students' harp dance tune plays at
−19 to −20 LUFS with a crest factor (true peak − LUFS) of 20–23 dB, real harp renders 17–18 dB, so its peaks cross
full scale where real harp's do not. Neither ceiling above sees a peak. :func:`frame_crest` is the mel-domain view
of it: each 16 ms frame's total power above the 0.4 s window centred on it (real harp through the latent: 99.9th
percentile 0.27 normalised units, 5.9 dB; the kicked students' harp 0.40–0.44), and :func:`crest_ceiling_loss`
costs the frames above a high quantile of the training data's (:func:`crest_ceiling`).

**Frame ceiling.** A loud passage can have every 0.4 s window below the momentary ceiling and every frame close to
its window (a small crest) and still hold single 16 ms frames louder than real frames: the clipped minutes that the
level guard's frame ceiling removes (``lmdm.streaming.level_guard``). :func:`frame_ceiling_loss` costs the frames
above a quantile of the training data's frame levels (:func:`frame_level`, the statistic the guard cuts at), so
training can pull the student under the ceiling the guard would otherwise enforce at run time. Measured (README,
"A frame ceiling in training"): added to v5's recipe at weight 50 it did not remove the unguarded clipping over
10 minutes, and it is off in ``configs/arc.json``.

**Peak ceiling.** What clips is a sample, and every term above sees the mel spectrogram, whose phase-free frames
cannot tell a peaky waveform from a smooth one of the same power. :func:`frame_peaks` decodes the rollout as the
stream does, mel to linear magnitude to Griffin-Lim, keeps Griffin-Lim's phase fixed and takes each hop's largest
sample, differentiable in the magnitudes; :func:`peak_ceiling_loss` costs the hops above a ceiling in dB of full
scale. On a 25 s clarinet stretch of an unguarded stream that clips, the stretch decoded in 4 s pieces this way and
the stream's own decoder (32 iterations from random phase) both put 6 hops above -1 dBFS (hop peaks correlate
0.94). Real training music through the codec (300 random 4 s crops of the training split, 74,400 hops): 99.9th
percentile -4.4 dBFS, 99.99th -2.3, loudest -0.96. Measured (README, "A peak ceiling in training"): added to v5's
recipe at -4.4 dBFS and weight 1000 it cut the unguarded clipped minutes at 4 steps over training seeds 0 and 1
from 24 to 5 of 240 (seed 1: 1 minute, 3 samples), not at 2 steps, and seed 2's chorale still runs away in loudness
(not a peak); it is off in ``configs/arc.json``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lmdm.audio.codec import MelCodec, log_mel_to_magnitude
from lmdm.audio.griffinlim import griffin_lim, istft, stft


def band_moments(mel: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band mean and standard deviation over all items and frames.

    Args:
        mel: ``(b, frames, n_mels)`` normalised log-mel.
        eps: added to the variance before the square root (a finite gradient at zero spread).

    Returns:
        ``(mean, std)``, each ``(n_mels,)``.
    """
    flat = mel.reshape(-1, mel.shape[-1]).float()
    mean = flat.mean(0)
    return mean, ((flat - mean).pow(2).mean(0) + eps).sqrt()


def level_anchor_loss(fake_mel: torch.Tensor, real_mel: torch.Tensor, per_item: bool = False) -> torch.Tensor:
    """Feature matching on band statistics: ``mean_bands[(mu_fake - mu_real)^2 + (sd_fake - sd_real)^2]``.

    Zero when both have the same per-band statistics (e.g. the same frames in another order); a uniform level
    offset ``d`` (in normalised log-mel) costs exactly ``d^2``. The real statistics are constants (detached).

    Args:
        fake_mel: ``(b, frames, n_mels)`` decoded mel of generated frames.
        real_mel: ``(b', frames', n_mels)`` decoded mel of real frames.
        per_item: False = statistics over the whole batch (one louder and one quieter item can cancel); True =
            item ``i`` of ``fake_mel`` against item ``i`` of ``real_mel`` (``b' = b``), averaged over items: a
            stream that runs away pays on its own.

    Returns:
        scalar (float32).

    Raises:
        ValueError: the two have different numbers of bands, or of items with ``per_item``.
    """
    if fake_mel.shape[-1] != real_mel.shape[-1]:
        raise ValueError(f"fake and real mel have {fake_mel.shape[-1]} and {real_mel.shape[-1]} bands")
    if per_item:
        if fake_mel.shape[0] != real_mel.shape[0]:
            raise ValueError(f"per_item needs as many real items as fake ones, got {real_mel.shape[0]} and "
                             f"{fake_mel.shape[0]}")
        return torch.stack([level_anchor_loss(f[None], r[None]) for f, r in zip(fake_mel, real_mel)]).mean()
    mu_f, sd_f = band_moments(fake_mel)
    mu_r, sd_r = (m.detach() for m in band_moments(real_mel))
    return ((mu_f - mu_r).pow(2) + (sd_f - sd_r).pow(2)).mean()


def ceiling_loss(fake_mel: torch.Tensor, ceiling: torch.Tensor) -> torch.Tensor:
    """Squared excess over each band's ceiling, summed over bands and averaged over items and frames:
    ``mean_{b,t} sum_f relu(mel[b, t, f] - ceiling[f])^2``.

    Zero while every value stays at or below its band's ceiling (all real training music, by construction of
    :func:`band_ceiling`); one frame with one band one unit over (21.7 dB) adds ``1 / (b * frames)``, so a stream
    whose frames all sit one unit over in five bands costs 5. Gradient reaches only the values above.

    Args:
        fake_mel: ``(b, frames, n_mels)`` decoded mel of generated frames.
        ceiling: ``(n_mels,)`` the loudest value of each band in the training data.

    Returns:
        scalar (float32).

    Raises:
        ValueError: ``ceiling`` does not have one value per band.
    """
    if ceiling.shape != fake_mel.shape[-1:]:
        raise ValueError(f"ceiling has shape {tuple(ceiling.shape)}, expected ({fake_mel.shape[-1]},): one per band")
    return torch.relu(fake_mel.float() - ceiling.detach()).pow(2).sum(-1).mean()


def momentary_level(mel: torch.Tensor, std: float, frames: int) -> torch.Tensor:
    """The level of each ``frames``-long window (stride 1) of a normalised log-mel, in the same units.

    A frame's level is ``log(sum_f exp(2 std mel_f)) / (2 std)``: its total mel power, back in normalised log-mel
    units, so a gain of ``g`` dB raises it by ``g / (20 log10(e) std)`` like every band. A window's level is the
    same of the mean power of its frames.

    Args:
        mel: ``(b, mel_frames, n_mels)`` normalised log-mel (``(ln |mel| - mean) / std``).
        std: the codec's ``std`` (nats per normalised unit).
        frames: mel frames per window (``DecodedMel.momentary_frames``: 0.4 s).

    Returns:
        ``(b, mel_frames - frames + 1)`` float32.

    Raises:
        ValueError: fewer than ``frames`` mel frames, or ``frames < 1``.
    """
    if frames < 1 or mel.shape[1] < frames:
        raise ValueError(f"momentary level needs windows of >= 1 frame and at least that many frames, got a "
                         f"window of {frames} over {mel.shape[1]} frames")
    power = torch.logsumexp(2 * std * mel.float(), -1)  # (b, frames): log of each frame's summed power
    windows = power.unfold(1, frames, 1)  # (b, windows, frames), a view
    return (torch.logsumexp(windows, -1) - math.log(frames)) / (2 * std)  # log-mean-exp: stable at any level


def momentary_ceiling_loss(fake_mel: torch.Tensor, ceiling: float, std: float, frames: int) -> torch.Tensor:
    """Squared excess of each window's :func:`momentary_level` over ``ceiling``, averaged over items and windows:
    ``mean relu(level - ceiling)^2``. Zero while every window stays at or below it; gradient reaches only the
    windows above.

    Args:
        fake_mel: ``(b, mel_frames, n_mels)`` decoded mel of generated frames.
        ceiling: normalised units (:func:`momentary_ceiling` of the training data).
        std, frames: as in :func:`momentary_level`.

    Returns:
        scalar (float32).
    """
    return torch.relu(momentary_level(fake_mel, std, frames) - ceiling).pow(2).mean()


def frame_crest(mel: torch.Tensor, std: float, frames: int) -> torch.Tensor:
    """Each mel frame's total power level (as in :func:`momentary_level`) minus the :func:`momentary_level` of the
    ``frames``-long window centred on it: how far a frame sticks out of its surroundings, the mel-domain view of a
    crest factor. Gain-invariant; 0 for steady sound; a lone frame however loud scores at most
    ``log(frames) / (2 std)``.

    Args:
        mel: ``(b, mel_frames, n_mels)`` normalised log-mel.
        std, frames: as in :func:`momentary_level` (``frames`` odd or even; the centre is frame ``frames // 2``).

    Returns:
        ``(b, mel_frames - frames + 1)`` float32, normalised units (one frame per full window; the edges have none).

    Raises:
        ValueError: as :func:`momentary_level`.
    """
    window = momentary_level(mel, std, frames)
    power = torch.logsumexp(2 * std * mel.float(), -1) / (2 * std)
    return power[:, frames // 2 : frames // 2 + window.shape[1]] - window


def crest_ceiling_loss(fake_mel: torch.Tensor, ceiling: float, std: float, frames: int) -> torch.Tensor:
    """Squared excess of each frame's :func:`frame_crest` over ``ceiling``, averaged over items and frames:
    ``mean relu(crest - ceiling)^2``; gradient only from the frames above.

    Args:
        fake_mel: ``(b, mel_frames, n_mels)`` decoded mel of generated frames.
        ceiling: normalised units (:func:`crest_ceiling` of the training data).
        std, frames: as in :func:`momentary_level`.

    Returns:
        scalar (float32).
    """
    return torch.relu(frame_crest(fake_mel, std, frames) - ceiling).pow(2).mean()


def frame_ceiling_loss(fake_mel: torch.Tensor, ceiling: float, std: float) -> torch.Tensor:
    """Squared excess of each 16 ms mel frame's :func:`frame_level` over ``ceiling``, averaged over items and
    frames: ``mean relu(level - ceiling)^2`` (:func:`momentary_ceiling_loss` with one-frame windows); gradient only
    from the frames above.

    Args:
        fake_mel: ``(b, mel_frames, n_mels)`` decoded mel of generated frames.
        ceiling: normalised units (a quantile of the training data's :func:`frame_level` values).
        std: the codec's ``std``.

    Returns:
        scalar (float32).
    """
    return momentary_ceiling_loss(fake_mel, ceiling, std, 1)


def frame_peaks(fake_mel: torch.Tensor, mel: "DecodedMel") -> torch.Tensor:
    """The waveform peak of each mel frame's hop of samples, after the decoder's Griffin-Lim, differentiable in
    the magnitudes: ``|istft(|X| e^{i phase})|`` maximised over each hop, where ``|X|`` is the codec's linear
    magnitude of ``fake_mel`` (``lmdm.audio.codec.log_mel_to_magnitude``, with gradient) and the phase is that of
    Griffin-Lim run on it without gradient (the codec's iterations and momentum, from the gradient phase:
    deterministic), held fixed. A waveform is linear in its magnitudes at fixed phase, so a gain of ``g`` dB on
    ``fake_mel`` scales every peak by ``10^(g/20)``. The mel frames are decoded on their own, without
    the stream's earlier audio; the first and last hop see only half a window.

    Args:
        fake_mel: ``(b, mel_frames, n_mels)`` normalised log-mel.
        mel: the codec's :class:`DecodedMel`.

    Returns:
        ``(b, mel_frames)`` float32, linear full-scale units (1 = a sample at full scale).
    """
    b, t, _ = fake_mel.shape
    mag = log_mel_to_magnitude(fake_mel, mel.mel_pinv, mel.log_mean, mel.std)  # (b, bins, t)
    mag = torch.cat([mag, mag[..., -1:]], -1)  # as the decoder: the output ends on a frame, t * hop samples
    window = torch.hann_window(mel.n_fft, device=mag.device)
    with torch.no_grad():
        audio = griffin_lim(mag.detach(), mel.n_fft, mel.hop, mel.gl_iters, mel.gl_momentum)  # gradient phase
        phase = torch.polar(torch.ones_like(mag), stft(audio, mel.n_fft, mel.hop, window).angle())
    wave = istft(mag * phase, mel.n_fft, mel.hop, window, t * mel.hop)
    return wave.abs().reshape(b, t, mel.hop).amax(-1)


def peak_ceiling_loss(fake_mel: torch.Tensor, mel: "DecodedMel", ceiling: float) -> torch.Tensor:
    """Squared excess of each mel frame's :func:`frame_peaks` over ``ceiling``, in the codec's normalised log units
    (``ln(peak / ceiling) / std``, so 1 unit = 21.7 dB as for the mel ceilings), averaged over items and frames;
    gradient only from the frames above.

    Args:
        fake_mel: ``(b, mel_frames, n_mels)`` decoded mel of generated frames.
        mel: the codec's :class:`DecodedMel`.
        ceiling: linear full-scale units in (0, 1] (``ARCConfig.peak_dbfs`` converted).

    Returns:
        scalar (float32).

    Raises:
        ValueError: ``ceiling`` outside (0, 1].
    """
    if not 0 < ceiling <= 1:
        raise ValueError(f"the peak ceiling must be in (0, 1] of full scale, got {ceiling}")
    excess = torch.relu(frame_peaks(fake_mel, mel).clamp_min(1e-12).log() - math.log(ceiling)) / mel.std
    return excess.pow(2).mean()


@torch.no_grad()
def decoded_summaries(mel: DecodedMel, works: list[torch.Tensor], statistics: dict, chunk: int = 4096) -> dict:
    """Several summaries of ``works`` from one decode (:func:`decoded_chunks`; decoding the training split is what
    costs, a minute or more at one thread on the 11.6 h data set, so ARC's start-up decodes it once for all of its
    ceilings).

    Args:
        mel: the checkpoint's differentiable decoder (used without gradient).
        works: each ``(frames, ch)`` latent frames of one work.
        statistics: name -> ``statistic(mel_chunk, std, frames) -> (1, n)`` (:func:`momentary_level`,
            :func:`frame_crest`, over 0.4 s windows: ``frames = mel.momentary_frames``; a chunk shorter than one
            window is skipped, so windows never span two works or a chunk boundary), or None for the loudest value
            of each band.
        chunk: latent frames decoded at once (chunking changes nothing).

    Returns:
        name -> ``(n,)`` float32 numpy array of the statistic's values, concatenated over chunks; for None,
        ``(n_mels,)`` float32 tensor on ``mel``'s device.

    Raises:
        ValueError: a statistic but no work as long as one window, or a band maximum but no frame at all.
    """
    values = {name: [] for name, statistic in statistics.items() if statistic is not None}
    band = len(values) < len(statistics)
    top = None
    for part in decoded_chunks(mel, works, chunk):
        if band:
            peak = part.amax(dim=(0, 1))
            top = peak if top is None else torch.maximum(top, peak)
        if part.shape[1] >= mel.momentary_frames:
            for name, found in values.items():
                found.append(statistics[name](part, mel.std, mel.momentary_frames)[0].cpu().numpy())
    out = {}
    for name, statistic in statistics.items():
        if statistic is None:
            if top is None:
                raise ValueError("a band maximum needs at least one latent frame")
            out[name] = top
        elif not values[name]:
            raise ValueError(f"{statistic.__name__} needs a work of at least {mel.momentary_frames} mel frames")
        else:
            out[name] = np.concatenate(values[name])
    return out


def windowed(statistic, mel: "DecodedMel", works: list[torch.Tensor], chunk: int = 4096) -> np.ndarray:
    """``statistic(mel_chunk, std, frames)`` (:func:`momentary_level` or :func:`frame_crest`, over 0.4 s windows)
    on every chunk of ``works`` decoded as :func:`decoded_chunks` does (windows never span two works or a chunk
    boundary), concatenated (:func:`decoded_summaries` of the one statistic).

    Args:
        statistic: ``(1, mel_frames, n_mels), std, frames -> (1, n)``.
        mel: the checkpoint's differentiable decoder (used without gradient).
        works: each ``(frames, ch)`` latent frames of one work.

    Returns:
        ``(n,)`` float32, normalised units.

    Raises:
        ValueError: no work as long as one window.
    """
    return decoded_summaries(mel, works, {"values": statistic}, chunk)["values"]


def frame_level(mel: torch.Tensor, std: float, frames: int) -> torch.Tensor:
    """:func:`momentary_level` of each single 16 ms mel frame (``frames`` is ignored: a :func:`decoded_summaries`
    statistic), ``(b, mel_frames)``: the level guard's frame ceiling (``lmdm.streaming.level_guard``)."""
    return momentary_level(mel, std, 1)


def momentary_levels(mel: "DecodedMel", works: list[torch.Tensor], chunk: int = 4096) -> np.ndarray:
    """The :func:`momentary_level` of every 0.4 s window of ``works`` (:func:`windowed`), ``(windows,)``."""
    return windowed(momentary_level, mel, works, chunk)


def frame_crests(mel: "DecodedMel", works: list[torch.Tensor], chunk: int = 4096) -> np.ndarray:
    """The :func:`frame_crest` of every frame of ``works`` with a full 0.4 s window around it (:func:`windowed`),
    ``(frames,)``."""
    return windowed(frame_crest, mel, works, chunk)


def windowed_quantile(statistic, mel: "DecodedMel", works: list[torch.Tensor], quantile: float = 0.999,
                      chunk: int = 4096) -> float:
    """The ``quantile`` (in [0, 1]; 1 = the largest) of :func:`windowed` ``statistic`` over ``works``, normalised
    units: :func:`momentary_ceiling` and :func:`crest_ceiling`.

    Raises:
        ValueError: no work as long as one window, or ``quantile`` outside [0, 1].
    """
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    return float(np.quantile(windowed(statistic, mel, works, chunk), quantile))


def momentary_ceiling(mel: "DecodedMel", works: list[torch.Tensor], quantile: float = 0.999,
                      chunk: int = 4096) -> float:
    """The ``quantile`` of :func:`momentary_levels` of ``works`` (1 = the loudest window); see
    :func:`windowed_quantile`."""
    return windowed_quantile(momentary_level, mel, works, quantile, chunk)


def crest_ceiling(mel: "DecodedMel", works: list[torch.Tensor], quantile: float = 0.999, chunk: int = 4096) -> float:
    """The ``quantile`` of :func:`frame_crests` of ``works``; see :func:`windowed_quantile`."""
    return windowed_quantile(frame_crest, mel, works, quantile, chunk)


@dataclass(frozen=True)
class LevelCeilings:
    """What the generator's decoded mel may not rise above (each None = that term is off).

    Attributes:
        band: ``(n_mels,)`` the training data's loudest decoded mel per band (:func:`band_ceiling`), for
            :func:`ceiling_loss`.
        momentary: a quantile of the training data's 0.4 s levels (:func:`momentary_ceiling`; ARC's
            ``momentary_quantile``), normalised units, for :func:`momentary_ceiling_loss`.
        crest: a quantile of the training data's frame crests (:func:`crest_ceiling`; ARC's ``crest_quantile``),
            normalised units, for :func:`crest_ceiling_loss`.
        frame: a quantile of the training data's 16 ms frame levels (:func:`frame_level`; ARC's
            ``frame_quantile``), normalised units, for :func:`frame_ceiling_loss`.
        peak: the decoded waveform's ceiling (ARC's ``peak_dbfs``), linear full-scale units, for
            :func:`peak_ceiling_loss`.
        loud_bass: a quantile of the training data's one-block bass levels (ARC's ``loop_gain_quantile``),
            normalised units: an own stream whose context ends above it gets the loop-gain term
            (``lmdm.train.arc.drone``); not one of :meth:`losses`.
    """

    band: torch.Tensor | None = None
    momentary: float | None = None
    crest: float | None = None
    frame: float | None = None
    peak: float | None = None
    loud_bass: float | None = None

    def losses(self, fake_mel: torch.Tensor, mel: "DecodedMel") -> tuple[torch.Tensor, ...]:
        """``(band, momentary, crest, frame, peak)`` losses of ``fake_mel`` ``(b, mel_frames, n_mels)`` (:data:`TERMS`
        order; zeros for a term that is off)."""
        zero = torch.zeros((), device=fake_mel.device)
        band = zero if self.band is None else ceiling_loss(fake_mel, self.band)
        momentary = zero if self.momentary is None else momentary_ceiling_loss(fake_mel, self.momentary, mel.std,
                                                                               mel.momentary_frames)
        crest = zero if self.crest is None else crest_ceiling_loss(fake_mel, self.crest, mel.std,
                                                                   mel.momentary_frames)
        frame = zero if self.frame is None else frame_ceiling_loss(fake_mel, self.frame, mel.std)
        peak = zero if self.peak is None else peak_ceiling_loss(fake_mel, mel, self.peak)
        return band, momentary, crest, frame, peak


#: the ceiling terms in ``LevelCeilings.losses`` order, as ARC's metrics name them (``loss_<name>`` on real-context
#: iterations, ``own_<name>`` on own-stream ones)
TERMS = ("ceiling", "momentary", "crest", "frame", "peak")


@torch.no_grad()
def decoded_chunks(mel: "DecodedMel", works: list[torch.Tensor], chunk: int = 4096):
    """Yield the decoded mel ``(1, mel_frames, n_mels)`` of ``works``, each work decoded on its own (the decoder
    looks back ``decoder_context`` frames, never across works), in chunks of ``chunk`` latent frames; each chunk
    after a work's first is decoded with the look-back frames before it, so chunking changes no decoded value.
    Runs on ``mel``'s device, without gradient."""
    dev = torch.device("cpu") if mel.autoencoder is None else next(mel.autoencoder.parameters()).device
    back = 0 if mel.autoencoder is None else mel.autoencoder.cfg.decoder_context
    for z in works:
        for i in range(0, len(z), chunk):
            lo = max(0, i - back)
            yield mel(z[lo : i + chunk].to(dev).float()[None])[:, (i - lo) * mel.patch :]


def band_ceiling(mel: DecodedMel, works: list[torch.Tensor], chunk: int = 4096) -> torch.Tensor:
    """The loudest value of each band of the decoded mel over ``works`` (decoded by :func:`decoded_chunks`;
    :func:`decoded_summaries` of the band maximum).

    Args:
        mel: the checkpoint's differentiable decoder (:class:`DecodedMel`; used without gradient).
        works: each ``(frames, ch)`` latent frames of one work (e.g. the training split's).
        chunk: latent frames decoded at once (chunking changes nothing).

    Returns:
        ``(n_mels,)`` float32, on ``mel``'s device.

    Raises:
        ValueError: no frames at all.
    """
    return decoded_summaries(mel, works, {"band": None}, chunk)["band"]


#: the window of :func:`momentary_level`, seconds (EBU R 128's momentary loudness)
MOMENTARY_S = 0.4


class DecodedMel(nn.Module):
    """Latent frames ``(b, frames, ch)`` -> normalised log-mel ``(b, frames * patch, n_mels)``, differentiable in
    the latent (``MelCodec.latent_to_mel`` decodes under ``no_grad``): the frozen autoencoder's decoder (a copy,
    movable to the student's device), or a reshape for the raw-mel latent. Not trained and not checkpointed.
    ``std`` (the codec's) and ``momentary_frames`` (mel frames in 0.4 s) are what :func:`momentary_level` needs;
    ``floor`` is the codec's log floor in normalised units (the quietest value a decoded band can mean);
    ``band_hz`` ``(n_mels,)`` is each band's centre frequency in Hz (the filterbank's Slaney mel scale). The
    codec's STFT settings, mel pseudo-inverse and Griffin-Lim settings are what :func:`frame_peaks` needs.

    Args:
        codec: the checkpoint's codec.
    """

    def __init__(self, codec: MelCodec):
        super().__init__()
        self.patch, self.n_mels = codec.cfg.patch, codec.cfg.n_mels
        self.channels = codec.channels
        self.std = codec.cfg.std
        self.floor = (math.log(codec.cfg.log_floor) - codec.cfg.mean) / codec.cfg.std
        self.momentary_frames = max(1, round(MOMENTARY_S * codec.cfg.sample_rate / codec.cfg.hop))
        self.log_mean, self.n_fft, self.hop = codec.cfg.mean, codec.cfg.n_fft, codec.cfg.hop
        self.gl_iters, self.gl_momentum = codec.cfg.gl_iters, codec.cfg.gl_momentum
        self.register_buffer("mel_pinv", codec.mel_pinv.detach().clone().float(), persistent=False)
        import librosa  # already imported by mel_pinv above; lazy like the codec's

        centres = librosa.mel_frequencies(n_mels=codec.cfg.n_mels + 2, fmin=codec.cfg.fmin, fmax=codec.cfg.fmax)[1:-1]
        self.register_buffer("band_hz", torch.as_tensor(centres, dtype=torch.float32), persistent=False)
        ae = codec.autoencoder
        self.autoencoder = None if ae is None else copy.deepcopy(ae).eval().requires_grad_(False)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """See the class docstring.

        Raises:
            ValueError: ``latent`` does not have the codec's channels.
        """
        if latent.shape[-1] != self.channels:
            raise ValueError(f"latent has {latent.shape[-1]} channels, the codec expects {self.channels}")
        b, t, _ = latent.shape
        patches = latent.float() if self.autoencoder is None else self.autoencoder.decode(latent.float())
        return patches.reshape(b, t * self.patch, self.n_mels)

    @torch.no_grad()
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel ``(b, frames * patch, n_mels)`` -> latent frames ``(b, frames, ch)`` (the autoencoder's
        encoder, or a reshape for the raw-mel latent); no gradient.

        Raises:
            ValueError: ``mel`` does not have the codec's bands or a whole number of latent frames.
        """
        b, t, m = mel.shape
        if m != self.n_mels or t % self.patch:
            raise ValueError(f"mel must be (batch, frames * {self.patch}, {self.n_mels}), got {tuple(mel.shape)}")
        patches = mel.float().reshape(b, t // self.patch, self.patch * m)
        return patches if self.autoencoder is None else self.autoencoder.encode(patches)


GAIN_UNITS_PER_DB = 1 / (20 * math.log10(math.e))  # nats of magnitude per dB


@torch.no_grad()
def with_gain(latent: torch.Tensor, mel: DecodedMel, db: torch.Tensor, below_hz: float = 0.0) -> torch.Tensor:
    """The latent of the same music played ``db`` dB louder (negative: quieter): decoded to normalised log-mel,
    every band shifted by ``db / (20 log10(e) std)`` (a gain on the audio; module docstring) but those at the
    codec's log floor (silence stays silent), held at the floor, re-encoded. For the raw-mel latent exact; through
    the autoencoder as exact as its round trip. With ``below_hz`` only the bands centred below it are shifted: a
    low-shelf gain, the bass alone louder or quieter.

    ARC's level kicks (``ARCConfig.own_stream_kick_db``) put an own stream in the loud or quiet state that a long
    stream drifts into, so that training meets it (and the level anchor pulls it back) without waiting minutes;
    bass kicks (``ARCConfig.own_stream_kick_hz``) the state the measured runaways are in, one low note holding
    98-100% of the power below 150 Hz (README, "What a runaway is").

    Args:
        latent: ``(b, frames, ch)`` latent frames.
        mel: the codec's :class:`DecodedMel`.
        db: ``(b,)`` gain per item, dB.
        below_hz: 0 = every band; ``f`` > 0 = only the bands whose centre (``mel.band_hz``) is below ``f`` Hz.

    Returns:
        ``(b, frames, ch)`` float latent frames.

    Raises:
        ValueError: ``db`` is not one gain per item, or ``latent`` does not have the codec's channels.
    """
    if db.shape != latent.shape[:1]:
        raise ValueError(f"db must be one gain per item, shape ({latent.shape[0]},), got {tuple(db.shape)}")
    decoded = mel(latent)
    shift = (db.float() * GAIN_UNITS_PER_DB / mel.std)[:, None, None].to(latent.device)
    if below_hz:
        shift = shift * (mel.band_hz < below_hz).to(shift)
    shifted = decoded + shift
    silent = decoded <= mel.floor + 1e-4  # at the floor: the magnitude is unknown below it, and stays silent
    return mel.encode(torch.where(silent, decoded, shifted.clamp_min(mel.floor)))
