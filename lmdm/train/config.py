"""The training config: one frozen dataclass, loaded from JSON with unknown keys rejected."""
from __future__ import annotations

from dataclasses import dataclass, field

from lmdm.audio.codec import CodecConfig
from lmdm.config import ConfigError
from lmdm.model.config import DiTConfig

MODES = ("block_causal", "enc_dec", "outpainting")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``lmdm train`` needs. Invalid combinations raise :class:`lmdm.config.ConfigError`.

    Attributes:
        data: folder built by ``lmdm data build`` (manifest.csv, audio/, midi/).
        run_dir: where checkpoints, the log and the final model go.
        export_dir: if set, the final inference checkpoint (EMA weights, bf16) is also written here.
        init_from: inference checkpoint to start from (fine-tuning, e.g. a bidirectional model into an LMDM).
        model: the DiT (size and streaming geometry ``block_frames``/``window_chunks``).
        codec: the mel codec (must match how the latents are computed; they are cached per codec config).
        autoencoder: folder of a trained patch autoencoder (``lmdm autoencoder train``): the model diffuses its
            learned latent (``model.latent_channels`` = its ``latent_channels``). None: the raw-mel latent
            (``model.latent_channels`` = the codec's ``patch * n_mels``). A run copies the autoencoder into
            ``RUN/autoencoder`` and resumes with that copy, so retraining the original cannot change a run.
        steps: optimiser steps in total.
        batch_size: crops per optimiser step: the *global* batch, over all processes of a ``torchrun`` run (kept
            when the number of processes changes; it must be a multiple of it).
        micro_batch: crops per forward/backward pass on one process, the rest by gradient accumulation
            (0, or more than the process's share ``batch_size / processes``: that share in one pass). Lower it
            when a batch does not fit in memory; the training stays the same (a resume may change it, and a run
            resumed on more processes keeps the same global batch even if the share drops below it).
        train_chunks: ``N``, chunks per block-causal crop (the teacher-forcing layout trains N blocks at once).
        mode_mix: probability of each training layout per step: "block_causal" (teacher forcing over clean and
            noisy chunks), "enc_dec" (context + one target), "outpainting" (bidirectional, context re-noised).
        lr, min_lr_ratio, warmup_steps: AdamW learning rate, linear warm-up then cosine decay to lr*min_lr_ratio.
        weight_decay, betas, grad_clip: AdamW and gradient-norm clipping.
        ema_decay: exponential moving average of the weights (the exported model).
        prompt_dropout: probability of training a crop unconditionally (enables classifier-free guidance).
        context_dropout: probability of hiding all context from a crop's targets (generation from nothing).
        control_dropout: probability of dropping all control groups of a crop.
        control_group_dropout: probability of dropping each remaining control group independently.
        t_logit_mean, t_logit_std: timesteps are drawn logit-normal (Esser et al. 2024, section 3.1) ...
        t_uniform: ... except for this fraction of draws, which are uniform on (0, 1): logit-normal(0, 1) alone
            trains t > 0.95 with probability 0.0016, yet every block starts at t = 1 (0 = logit-normal only).
        bf16: mixed precision with the device's autocast dtype (``lmdm.device.autocast_dtype``: bfloat16 on the
            CPU, about 2x faster on AVX-512 bf16 machines, and on bf16-capable GPUs; MPS runs float32).
        compile: ``torch.compile`` the model (faster steps after a minute of compiling).
        threads: torch intra-op threads (0 = torch's default).
        seed: seeds data order, noise and dropout (resuming continues the same random stream).
        log_every, val_every, ckpt_every: intervals in steps.
        val_batches: fixed validation batches (same crops, noise and timesteps every time).
        keep_checkpoints: training checkpoints kept on disk (older ones are deleted).
        max_hours: stop (with a checkpoint) after this many hours of wall time; 0 = no limit.
        sampler: the sampler the exported checkpoint recommends, written into its ``info["sampler"]``
            (``lmdm.streaming.streamer.checkpoint_sampler``: ``lmdm generate``, ``eval`` and ``drift`` start
            from it), e.g. ``{"eta": 0.5}``; None = none (``SamplerConfig``'s defaults). Does not change training.
    """

    data: str = "data/music"
    run_dir: str = "runs/lmdm-small"
    export_dir: str | None = None
    init_from: str | None = None
    model: DiTConfig = field(default_factory=DiTConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    autoencoder: str | None = None
    steps: int = 20000
    batch_size: int = 16
    micro_batch: int = 0
    train_chunks: int = 8
    mode_mix: dict[str, float] = field(default_factory=lambda: {"block_causal": 0.7, "enc_dec": 0.15, "outpainting": 0.15})
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 500
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    prompt_dropout: float = 0.1
    context_dropout: float = 0.1
    control_dropout: float = 0.5
    control_group_dropout: float = 0.3
    t_logit_mean: float = 0.0
    t_logit_std: float = 1.0
    t_uniform: float = 0.0
    bf16: bool = True
    compile: bool = False
    threads: int = 0
    seed: int = 0
    log_every: int = 50
    val_every: int = 500
    val_batches: int = 4
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    max_hours: float = 0.0
    sampler: dict | None = None

    def __post_init__(self) -> None:
        if self.sampler is not None:
            from lmdm.streaming.streamer import checkpoint_sampler

            checkpoint_sampler({"sampler": self.sampler})  # raises ConfigError on an unknown field or bad value
        unknown = sorted(set(self.mode_mix) - set(MODES))
        if unknown:
            raise ConfigError(f"mode_mix has unknown mode(s) {unknown}; valid modes are: {', '.join(MODES)}")
        if not self.mode_mix or min(self.mode_mix.values()) < 0 or sum(self.mode_mix.values()) <= 0:
            raise ConfigError(f"mode_mix needs non-negative weights with a positive sum, got {self.mode_mix}")
        if self.autoencoder is None and self.model.latent_channels != self.codec.channels:
            raise ConfigError(f"model.latent_channels ({self.model.latent_channels}) must equal the codec's "
                             f"patch * n_mels ({self.codec.channels}) for the raw-mel latent (or name an autoencoder)")
        if not 0 <= self.t_uniform <= 1:
            raise ConfigError(f"t_uniform must be in [0, 1], got {self.t_uniform}")
        if self.train_chunks < self.model.window_chunks + 1:
            raise ConfigError(f"train_chunks ({self.train_chunks}) must be at least window_chunks + 1 "
                             f"({self.model.window_chunks + 1})")
        for name in ("steps", "batch_size", "log_every", "val_every", "ckpt_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch < 0 or (self.micro_batch and self.batch_size % self.micro_batch):
            raise ConfigError(f"micro_batch must be 0 (no accumulation) or divide batch_size ({self.batch_size}), "
                              f"got {self.micro_batch}")

    @property
    def crop_frames(self) -> int:
        """Frames per training crop (``train_chunks * block_frames``)."""
        return self.train_chunks * self.model.block_frames
