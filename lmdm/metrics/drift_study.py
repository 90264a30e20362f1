"""``lmdm drift-study``: error accumulation shown over many long streams (issue 13, "ARC-Forcing shown right").

Every system (a checkpoint with a sampler, steps and CFG) streams every prompt with every seed for ``minutes``; each
stream is decoded block by block (``lmdm.metrics.report.stream_audio``) and measured per ``window_s`` window (60 s:
per minute) with the lenses of ``lmdm drift`` (``window_rows``) against **one** shared baseline
(``load_baseline``: the KAD reference and the real-music band). ``lmdm.metrics.drift_stats`` turns the streams into
per-minute medians with CIs and the first-versus-last-minute verdict; ``lmdm.metrics.drift_inject`` shows, on real
validation music, that the lenses flag an injected drift.

**Resuming**: each stream's rows are written as soon as it is measured, atomically, to
``out_dir/streams/LABEL-pP-sSEED-HASH.json`` (HASH: of everything the rows depend on: the system, prompt, seed,
minutes, window and data set). A study that is killed and started again skips every stream whose file exists, so
only the unfinished ones are generated; changing a setting changes the hash, so stale rows are never reused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmdm.audio.griffinlim import PHASE_INITS
from lmdm.config import ConfigError, from_dict, read_json, replace, to_dict
from lmdm.errors import UsageError
from lmdm.streaming.streamer import SamplerConfig


@dataclass(frozen=True)
class StudySystem:
    """One curve of the study.

    Attributes:
        label: its name in tables, plots and stream files (unique in the study).
        checkpoint: the checkpoint folder (relative paths: from the working directory).
        sampler, steps, cfg_scale, eta: how each block is denoised (``SamplerConfig``; the stream's seed is the
            study's; eta 1 is plain ping-pong and is left out of a stream's key, so streams measured before the
            field existed are found again).
        window_chunks: the clean context a block sees, in blocks (the same weights with another sliding window,
            ``lmdm.bench.run.with_window``); None = the checkpoint's. A shorter context is a drift regime.
        switch_every_s: 0 = one prompt per stream; else the prompt moves on to the study's next prompt every this
            many seconds (cycling), a prompt-switch drift regime.
        level_guard: None = the model as it is; else a quantile in (0, 1] of the study data's training split's
            0.4 s levels (1 = the loudest window), the ceiling of a ``lmdm.streaming.level_guard.LevelGuard``
            that turns down every block above it before the stream caches it (at 1, a checkpoint that stores its
            ``level_ceiling`` uses that: its training data's). Left out of a stream's key when None.
        frame_guard: None = no frame check; else a quantile in (0, 1] of the same split's 16 ms mel-frame levels,
            the guard's ``frame_ceiling`` (``lmdm.streaming.level_guard.FRAME_QUANTILE`` is what a checkpoint's
            guard uses). Needs ``level_guard``. Left out of a stream's key when None.
    """

    label: str
    checkpoint: str
    sampler: str = "pingpong"
    steps: int = 8
    cfg_scale: float = 2.0
    eta: float = 1.0
    window_chunks: int | None = None
    switch_every_s: float = 0.0
    level_guard: float | None = None
    frame_guard: float | None = None

    def __post_init__(self) -> None:
        """Raises: ConfigError: an empty label, a bad sampler setting, window_chunks < 1, switch_every_s < 0,
        level_guard or frame_guard outside (0, 1], or a frame_guard without a level_guard."""
        if not isinstance(self.label, str) or not self.label.strip():
            raise ConfigError(f"a system needs a non-empty label, got {self.label!r}")
        self.sampler_config(0)  # SamplerConfig checks steps, sampler and CFG
        if self.window_chunks is not None and (isinstance(self.window_chunks, bool) or self.window_chunks < 1):
            raise ConfigError(f"{self.label}: window_chunks must be a positive integer or null, got {self.window_chunks!r}")
        if not (math.isfinite(self.switch_every_s) and self.switch_every_s >= 0):
            raise ConfigError(f"{self.label}: switch_every_s must be >= 0 (0 = no switch), got {self.switch_every_s!r}")
        for name in ("level_guard", "frame_guard"):
            q = getattr(self, name)
            if q is not None and (isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1):
                raise ConfigError(f"{self.label}: {name} must be a quantile in (0, 1] or null (no guard), got {q!r}")
        if self.frame_guard is not None and self.level_guard is None:
            raise ConfigError(f"{self.label}: frame_guard is the level guard's frame check; set level_guard too")

    def sampler_config(self, seed: int) -> SamplerConfig:
        """The ``SamplerConfig`` of one stream."""
        return SamplerConfig(steps=self.steps, sampler=self.sampler, cfg_scale=self.cfg_scale, seed=seed, eta=self.eta)


@dataclass(frozen=True)
class StudyConfig:
    """A drift study (``configs/drift-study.json``).

    Attributes:
        systems: the curves; every checkpoint must use the same mel codec (one baseline measures all).
        data: the built data set: KAD reference (train), real-music band and injected-drift streams (validation),
            and the default prompts.
        prompts: the prompts; empty = ``n_prompts`` validation captions (``lmdm.eval.windows.validation_prompts``
            with ``prompt_seed``, as ``lmdm eval`` draws them).
        seeds: the seeds of each prompt's streams.
        minutes: length of each stream (at most 60).
        window_s: window length, seconds (60 = per minute; at least two embedder crops, about 8.2 s).
        out_dir: where stream files, ``study.json`` and the plots go.
        n_boot: bootstrap resamples of every CI.
        sensitivity_streams: real validation streams per variant of the injected-drift check; 0 = no check.
        gl_iters, gl_init: the Griffin-Lim decoding of every stream (``CodecConfig``'s fields), or None for each
            checkpoint's own; set them to decode every system alike (e.g. as an earlier study did: 32 iterations
            from "random" phase, the decoder before the gradient phase). Part of each stream file's key.
    """

    systems: tuple[StudySystem, ...]
    data: str = "data/music"
    prompts: tuple[str, ...] = ()
    n_prompts: int = 4
    prompt_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    minutes: float = 10.0
    window_s: float = 60.0
    out_dir: str = "runs/drift-study"
    n_boot: int = 1000
    sensitivity_streams: int = 3
    gl_iters: int | None = None
    gl_init: str | None = None

    def __post_init__(self) -> None:
        """Raises: ConfigError: no system, duplicate labels, minutes not in (0, 60], a window longer than a stream,
        no or negative seeds, or a count below its minimum."""
        if not self.systems:
            raise ConfigError("a drift study needs at least one system")
        labels = [s.label for s in self.systems]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"system labels must be unique, got {labels}")
        if not (math.isfinite(self.minutes) and 0 < self.minutes <= 60):
            raise ConfigError(f"minutes must be in (0, 60], got {self.minutes}")
        if not (math.isfinite(self.window_s) and 0 < self.window_s <= self.minutes * 60):
            raise ConfigError(f"window_s must be positive and at most a stream ({self.minutes * 60:g} s), "
                              f"got {self.window_s}")
        if not self.seeds or any(isinstance(s, bool) or s < 0 for s in self.seeds) or len(set(self.seeds)) < len(self.seeds):
            raise ConfigError(f"seeds must be distinct integers >= 0, at least one, got {list(self.seeds)}")
        for k, least in (("n_prompts", 1), ("n_boot", 1), ("sensitivity_streams", 0)):
            v = getattr(self, k)
            if isinstance(v, bool) or v < least:
                raise ConfigError(f"{k} must be an integer >= {least}, got {v!r}")
        if self.gl_iters is not None and (isinstance(self.gl_iters, bool) or self.gl_iters < 1):
            raise ConfigError(f"gl_iters must be an integer >= 1 or null (each checkpoint's), got {self.gl_iters!r}")
        if self.gl_init is not None and self.gl_init not in PHASE_INITS:
            raise ConfigError(f"gl_init must be {', '.join(PHASE_INITS)} or null (each checkpoint's), got "
                              f"{self.gl_init!r}")
        if any(not p.strip() for p in self.prompts):
            raise ConfigError("prompts must not be empty strings (leave the list empty to draw validation captions)")


def load_study(path: str | Path) -> StudyConfig:
    """Load a :class:`StudyConfig` from JSON (each system checked on its own, so errors name ``systems[i]``).

    Raises:
        ConfigError: a missing file, invalid JSON, an unknown key (the valid ones are listed) or a bad value.
    """
    data = read_json(path, ConfigError, "drift-study config")
    if isinstance(data, dict) and isinstance(data.get("systems"), list):
        data = {**data, "systems": tuple(from_dict(StudySystem, s, f"{path}: systems[{i}]")
                                         for i, s in enumerate(data["systems"]))}
    return from_dict(StudyConfig, data, str(path))


def quick(cfg: StudyConfig) -> StudyConfig:
    """A smoke run of ``cfg``: 1 minute in two 30 s windows, the first seed and two prompts, one real stream per
    injected drift (minutes on a CPU, wide CIs; its stream files do not collide with the full study's)."""
    return replace(cfg, minutes=1.0, window_s=30.0, seeds=cfg.seeds[:1], n_prompts=min(cfg.n_prompts, 2),
                   prompts=cfg.prompts[:2], n_boot=200, sensitivity_streams=min(cfg.sensitivity_streams, 1))


def study_prompts(cfg: StudyConfig) -> list[str]:
    """The study's prompts: ``cfg.prompts``, else ``n_prompts`` validation captions of ``cfg.data``.

    Raises:
        DataError: no data set or no validation piece.
    """
    from lmdm.eval.windows import validation_prompts

    return list(cfg.prompts) or validation_prompts(cfg.data, cfg.n_prompts, cfg.prompt_seed)


def prompt_schedule(system: StudySystem, prompts: list[str], index: int, seconds: float) -> str | list:
    """What stream ``index`` of ``system`` is prompted with: ``prompts[index]``, or with ``switch_every_s`` a
    schedule ``[(start_s, prompt)]`` cycling through the prompts from ``prompts[index]``."""
    if not system.switch_every_s:
        return prompts[index]
    n = math.ceil(seconds / system.switch_every_s)
    return [(k * system.switch_every_s, prompts[(index + k) % len(prompts)]) for k in range(n)]


def weights_digest(checkpoint: str | Path) -> str | None:
    """SHA-1 (12 hex digits) of a checkpoint folder's ``model.safetensors`` (the DiT's weights), or None when the
    folder has none: a retrained checkpoint written to the same folder is a different system."""
    path = Path(checkpoint) / "model.safetensors"
    if not path.is_file():
        return None
    h = hashlib.sha1()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def decoding_overrides(cfg: StudyConfig) -> dict:
    """The study's decoding settings that replace the checkpoints' (``gl_iters``, ``gl_init`` where set)."""
    return {k: getattr(cfg, k) for k in ("gl_iters", "gl_init") if getattr(cfg, k) is not None}


def stream_decoding(cfg: StudyConfig, system: StudySystem) -> dict:
    """How ``system``'s streams are decoded: ``{"gl_iters", "gl_init"}``, the study's overrides over the
    checkpoint's codec config (its defaults where the config predates a field).

    Raises:
        CheckpointError: the checkpoint folder is missing or its config is unreadable.
    """
    from lmdm.audio.codec import CodecConfig
    from lmdm.checkpoint import read_config

    own = from_dict(CodecConfig, read_config(system.checkpoint)["codec"], f"{system.checkpoint}/config.json:codec")
    return {"gl_iters": own.gl_iters, "gl_init": own.gl_init, **decoding_overrides(cfg)}


# how every stream was decoded before the decoding was part of a stream's key: such files keep their key
LEGACY_DECODING = {"gl_iters": 32, "gl_init": "random"}


def stream_settings(cfg: StudyConfig, system: StudySystem, prompt, seed: int) -> dict:
    """Everything a stream's rows depend on (its file's hash is of this), the checkpoint's weights
    (:func:`weights_digest`) and the decoding (:func:`stream_decoding`, left out when it is
    :data:`LEGACY_DECODING`, so the streams measured before it was keyed are found again) included."""
    key = dataclasses.asdict(system)
    if key["eta"] == 1.0:  # plain ping-pong: the key streams had before eta was a setting
        del key["eta"]
    for name in ("level_guard", "frame_guard"):  # likewise for streams measured before the guard existed
        if key[name] is None:
            del key[name]
    settings = {"system": key, "weights": weights_digest(system.checkpoint), "prompt": prompt,
                "seed": seed, "minutes": cfg.minutes, "window_s": cfg.window_s, "data": str(cfg.data)}
    decoding = stream_decoding(cfg, system)
    return settings if decoding == LEGACY_DECODING else {**settings, "decoder": decoding}


def stream_path(out_dir: str | Path, settings: dict, index: int) -> Path:
    """``out_dir/streams/LABEL-pINDEX-sSEED-HASH.json`` of a stream."""
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", settings["system"]["label"]).strip("_")
    return Path(out_dir) / "streams" / f"{slug}-p{index}-s{settings['seed']}-{digest}.json"


def checkpoint_codec(cfg: StudyConfig):
    """The ``CodecConfig`` every system's checkpoint shares (read from their ``config.json``, no weights loaded).

    Raises:
        CheckpointError: a checkpoint folder is missing or its config is invalid.
        ConfigError: the checkpoints use different codecs (one baseline cannot measure them all).
    """
    from lmdm.audio.codec import CodecConfig, mel_settings
    from lmdm.checkpoint import read_config

    codecs = {s.label: from_dict(CodecConfig, read_config(s.checkpoint)["codec"], f"{s.checkpoint}/config.json:codec")
              for s in cfg.systems}
    mel = {label: tuple(mel_settings(dataclasses.asdict(c)).items())
           for label, c in codecs.items()}  # the decoding may differ: each stream decodes with its own
    if len(set(mel.values())) > 1:
        raise ConfigError(f"the systems' checkpoints use different mel codecs ({', '.join(codecs)}); one study "
                          "measures systems of one codec")
    return next(iter(codecs.values()))


def checkpoint_generator(progress: bool = False, decoding: dict | None = None, data: str | Path = "data/music"
                         ) -> Callable[[StudySystem, object, int, float], np.ndarray | tuple[np.ndarray, dict]]:
    """The default ``generate(system, prompt, seed, seconds) -> (samples,)``: load each system's checkpoint once
    (with its ``window_chunks``, and its codec's decoding replaced by ``decoding``: :func:`decoding_overrides`)
    and stream it with ``lmdm.metrics.report.stream_audio``. A system with a ``level_guard`` streams through a
    ``LevelGuard`` whose ceilings (``level_guard``, ``frame_guard``) are the checkpoint's stored ones at the
    quantiles it stores them for (1 and ``FRAME_QUANTILE``: ``lmdm.streaming.level_guard.level_ceilings``, the
    ceilings ``--level-guard`` uses), else measured on ``data``'s training split, and returns ``(samples, extra)``
    with ``extra = {"guard": LevelGuard.summary()}``, kept in its stream file."""
    from lmdm.checkpoint import load_checkpoint
    from lmdm.metrics.report import stream_audio

    loaded, ceilings, latent_sets = {}, {}, {}

    def ceiling(system: StudySystem, ckpt, quantile: float, frames: int | None) -> float:
        """The checkpoint's stored ceiling at the quantile it stores (what ``--level-guard`` uses), else measured
        on ``data``'s training split, encoded once per checkpoint."""
        from lmdm.streaming.level_guard import latent_set_ceiling, stored_ceiling

        stored = stored_ceiling(ckpt.info, quantile, frames)
        if stored is not None:
            return stored
        if system.checkpoint not in latent_sets:
            from lmdm.train.dataset import encode_latent_set, load_latent_set

            latent_sets.clear()  # one data set's latents in memory at a time
            latent_sets[system.checkpoint] = encode_latent_set(load_latent_set(data, ckpt.codec.cfg), ckpt.codec)
        return latent_set_ceiling(ckpt.codec, latent_sets[system.checkpoint], quantile, frames=frames)

    def generate(system: StudySystem, prompt, seed: int, seconds: float):
        if system.label not in loaded:
            ckpt = load_checkpoint(system.checkpoint)
            if decoding:
                ckpt.codec = ckpt.codec.with_decoding(**decoding)
            if system.window_chunks is not None:
                from lmdm.bench.run import with_window

                ckpt = dataclasses.replace(ckpt, model=with_window(ckpt.model, system.window_chunks))
            loaded.clear()  # one model in memory at a time
            loaded[system.label] = ckpt
        ckpt = loaded[system.label]
        if system.level_guard is None:
            return stream_audio(ckpt, prompt, seconds, system.sampler_config(seed), progress=progress)
        from lmdm.streaming.level_guard import DecodedMel, LevelGuard

        key = (system.checkpoint, system.level_guard, system.frame_guard)
        if key not in ceilings:
            ceilings[key] = (ceiling(system, ckpt, system.level_guard, None),
                             None if system.frame_guard is None else ceiling(system, ckpt, system.frame_guard, 1))
        guard = LevelGuard(DecodedMel(ckpt.codec), *ceilings[key])
        audio = stream_audio(ckpt, prompt, seconds, system.sampler_config(seed), progress=progress,
                             block_filter=guard)
        return audio, {"guard": guard.summary()}

    return generate


def _read_record(path: Path) -> dict | None:
    """A stream file's record, or None when there is none (or it is unreadable: it is then made again)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("rows"), list) else None


def run_streams(cfg: StudyConfig, baseline, prompts: list[str], generate: Callable | None = None,
                log: Callable[[str], None] = print) -> dict[str, list[dict]]:
    """Every (system, prompt, seed) stream measured, reusing the stream files already in ``cfg.out_dir``.

    Args:
        baseline: the shared ``lmdm.metrics.report.Baseline``.
        generate: ``(system, prompt_or_schedule, seed, seconds) -> (samples,)`` decoded audio at the baseline's
            rate, or ``(samples, extra)`` with a dict kept in the stream's record; default
            :func:`checkpoint_generator`.
        log: called with one line per stream.

    Returns:
        ``{label: [stream record]}``, a record being ``{"settings", "rows", "wall_s"}`` (``rows`` from
        ``window_rows``; ``wall_s`` the seconds it took to generate and measure).
    """
    from lmdm.atomic import write_text
    from lmdm.metrics.report import window_rows

    generate = generate or checkpoint_generator(decoding=decoding_overrides(cfg), data=cfg.data)
    sr, seconds = baseline.codec.cfg.sample_rate, cfg.minutes * 60
    (Path(cfg.out_dir) / "streams").mkdir(parents=True, exist_ok=True)
    total, done, out = len(cfg.systems) * len(prompts) * len(cfg.seeds), 0, {}
    for system in cfg.systems:
        out[system.label] = []
        for i in range(len(prompts)):
            prompt = prompt_schedule(system, prompts, i, seconds)
            for seed in cfg.seeds:
                done += 1
                settings = stream_settings(cfg, system, prompt, seed)
                path = stream_path(cfg.out_dir, settings, i)
                record = _read_record(path)
                if record is not None and record.get("settings") == json.loads(json.dumps(settings)):
                    log(f"[{done}/{total}] {system.label} prompt {i} seed {seed}: done before ({path.name})")
                else:
                    t = time.perf_counter()
                    audio = generate(system, prompt, seed, seconds)
                    audio, extra = audio if isinstance(audio, tuple) else (audio, {})
                    rows = window_rows(audio, sr, cfg.window_s, baseline)
                    record = {"settings": settings, "rows": rows, "wall_s": time.perf_counter() - t, **extra}
                    write_text(path, json.dumps(record, indent=1))
                    log(f"[{done}/{total}] {system.label} prompt {i} seed {seed}: {record['wall_s']:.0f} s")
                out[system.label].append(record)
    return out


def run_study(cfg: StudyConfig, generate: Callable | None = None, log: Callable[[str], None] = print) -> dict:
    """The whole study: baseline, streams (resumed), injected-drift check, aggregates; writes ``study.json``,
    ``study.png`` and ``sensitivity.png`` into ``cfg.out_dir``.

    Returns:
        the study (what ``study.json`` holds): ``config``, ``prompts``, ``reference``, ``real_music``, ``systems``
        (``{label: drift_stats.aggregate(...)}``), ``sensitivity`` (``drift_inject.sensitivity_check``, or None),
        ``wall_s`` (per system, mean seconds to generate and measure a stream, as recorded in its file) and ``files``.

    Raises:
        UsageError: ``out_dir`` cannot be created; DataError: ``data`` is not a built data set with validation
        pieces; CheckpointError, EmbedderError, TranscriberError: a missing model; ConfigError: mixed codecs.
    """
    from lmdm.atomic import write_text
    from lmdm.metrics.drift_inject import sensitivity_check
    from lmdm.metrics.drift_stats import aggregate, plot_study
    from lmdm.metrics.report import load_baseline

    out_dir = Path(cfg.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the study's out_dir {out_dir} ({e})") from e
    prompts = study_prompts(cfg)
    baseline = load_baseline(checkpoint_codec(cfg), cfg.data, cfg.window_s)
    log(f"reference: {baseline.source}")
    sens = None
    if cfg.sensitivity_streams:
        sens = sensitivity_check(baseline, cfg.minutes * 60, cfg.window_s, cfg.sensitivity_streams, cfg.n_boot)
        log(f"injected-drift check: {'passed' if sens['passed'] else 'FAILED'}")
    streams = run_streams(cfg, baseline, prompts, generate, log)
    systems = {label: aggregate([r["rows"] for r in recs], baseline.real_music, cfg.n_boot)
               for label, recs in streams.items()}
    files = {"json": str(out_dir / "study.json"), "plot": str(out_dir / "study.png")}
    title = f"{len(prompts)} prompts x {len(cfg.seeds)} seeds, {cfg.minutes:g} min; median over streams, 95% CI"
    plot_study(systems, baseline.real_music, files["plot"], title)
    if sens is not None:
        files["sensitivity_plot"] = str(out_dir / "sensitivity.png")
        plot_study(sens["systems"], baseline.real_music, files["sensitivity_plot"],
                   f"injected drifts on real validation music ({sens['n_streams']} streams)")
    study = {"config": to_dict(cfg), "prompts": prompts, "reference": baseline.source,
             "real_music": baseline.real_music, "systems": systems, "sensitivity": sens,
             "wall_s": {label: float(np.mean([r["wall_s"] for r in recs])) for label, recs in streams.items()},
             "files": files}
    write_text(files["json"], json.dumps(study, indent=1))
    return study


def format_study(study: dict) -> str:
    """The study as markdown: the injected-drift check, the per-minute table, the first/last verdict and a line per
    system saying which lenses flag drift (error accumulation) and on which the last window is outside the real
    band (far from real music, whether or not it got there by drifting)."""
    from lmdm.metrics.drift_stats import BAND_SD, MAX_RATIO, minute_table, verdict_table

    lines = [f"prompts: {'; '.join(map(str, study['prompts']))}", f"reference: {study['reference']}", ""]
    sens = study.get("sensitivity")
    if sens:
        lines += [(f"## Can the lenses see drift? Real validation music ({sens['n_streams']} streams of "
                   f"{sens['stream_s'] / 60:.3g} min), unchanged and with injected drifts: "
                   f"{'passed' if sens['passed'] else 'FAILED'}"), "",
                  *[f"- {v}: flagged by {', '.join(ls) if ls else 'no lens'}" for v, ls in sens["flagged_by"].items()],
                  "", verdict_table(sens["systems"]), ""]
    lines += ["## Per minute (median over streams)", "", minute_table(study["systems"], study["real_music"]), "",
              (f"## First vs last window: distance from real in real sd; the issue's target is ratio <= {MAX_RATIO}, "
               f"in band = last d <= {BAND_SD:g}, drift = neither"), "", verdict_table(study["systems"]), ""]
    for label, agg in study["systems"].items():
        meets = [m for m, v in agg["verdict"].items() if v["meets_ratio"]]
        outside = [m for m, v in agg["verdict"].items() if v["last_in_band"] is False]
        lines.append(f"- {label} ({agg['n_streams']} streams, {study['wall_s'][label]:.0f} s each): ratio <= "
                     f"{MAX_RATIO} on {len(meets)}/{len(agg['verdict'])} lenses; drift flagged by "
                     f"{', '.join(agg['drift_lenses']) or 'no lens'}; last window outside the real band on "
                     f"{', '.join(outside) or 'no lens'}" + _tail_text(agg))
    return "\n".join(lines)


def _tail_text(agg: dict) -> str:
    """The per-system line's clause on the streams that clip (``agg["tail"]``, ``drift_stats.level_tail``; "" for a
    study saved before it existed)."""
    tail = agg.get("tail")
    if not tail:
        return ""
    worst = 100 * tail["most_clipped_window"]
    worst = f"{worst:.1f}" if worst >= 0.1 else f"{worst:.2g}"  # a few samples a minute read as such, not as 0.0
    return (f"; {tail['streams_clipping']} of {agg['n_streams']} streams clip, in {tail['windows_clipping']} of "
            f"{tail['windows']} windows (the worst window {worst}% of its samples; "
            f"loudest window {tail['loudest_window_lufs']:.1f} LUFS)")
