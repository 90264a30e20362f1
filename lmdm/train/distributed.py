"""Data-parallel training on ``torchrun`` with ``DistributedDataParallel`` (DDP): the process group, the split of a
global batch over ranks and micro-batches, and the few collectives the loop needs.

No launcher and no all-reduce of our own: ``torchrun`` starts the processes and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous (``MASTER_ADDR``/``MASTER_PORT`` or ``--rdzv-endpoint``); PyTorch's DDP averages
the gradients. The backend is NCCL on CUDA and gloo on the CPU. A single process (no ``WORLD_SIZE``, or 1) needs no
process group and runs exactly as before.

**How a global batch is split** (:class:`BatchPlan`). Every rank holds the same seeded CPU generator and draws the
*whole* global batch's random choices from it (crop positions, captions, timesteps, noise, dropouts: a few
kilobytes), then each rank reads and computes only its own rows ``[rank * per_rank, (rank + 1) * per_rank)``, in
micro-batches of ``micro_batch`` rows with gradient accumulation. Hence:

* the global batch is the same whatever the world size: ``world_size * micro_batch * accum = batch_size``;
* one process and N processes see the same examples and the same noise, so they compute the same loss and
  gradients up to the order of floating-point sums (``tests/test_distributed.py``);
* the generators of all ranks stay identical, so the checkpoint (written by rank 0) resumes on any number of
  processes, and the resumed run continues the same random stream.

Sources: PyTorch's DDP tutorial and ``torchrun`` docs (pytorch.org/docs/stable/elastic/run.html); the global-batch
split follows torchtitan and nanoGPT's ``train.py`` (gradient accumulation under ``no_sync``).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmdm.device import resolve_device
from lmdm.errors import LmdmError, UsageError

#: minutes a collective may wait for the other ranks before the run is aborted (``LMDM_DIST_TIMEOUT_MIN``
#: overrides it): a first run waits at :meth:`Distributed.main_first` while rank 0 encodes the whole data set
#: into its cache, which takes longer than NCCL's default of 10 minutes on a large data set
DEFAULT_TIMEOUT_MIN = 60.0


class DistributedError(LmdmError, RuntimeError):
    """Another rank failed, so this one cannot go on (the failing rank's own error says why)."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run.

    Attributes:
        rank: global rank (0 writes checkpoints, logs and the progress bar).
        world_size: number of processes.
        local_rank: rank on this node (picks the GPU ``cuda:local_rank``).
        device: where this process trains.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when there are several processes (collectives run)."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (a no-op for one process)."""
        if self.active:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (a float64 all-reduce; ``value`` itself for one process)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def any(self, flag: bool) -> bool:
        """True if ``flag`` is True on any rank (so that all ranks stop together)."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], device=self._collective_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (writing caches, copying folders), then the others (reading them).

        Rank 0 tells the others whether its block succeeded (a broadcast where a barrier would do), so an error
        there does not leave them waiting until the timeout: they raise :class:`DistributedError` while rank 0
        raises its own error.

        Raises:
            DistributedError: (ranks > 0) rank 0 failed inside the block.
        """
        if not self.active:
            yield
            return
        if self.is_main:
            try:
                yield
            except BaseException:
                with contextlib.suppress(Exception):  # the others may be gone already; rank 0's error matters
                    self._broadcast_flag(False)
                raise
            self._broadcast_flag(True)
        else:
            if not self._broadcast_flag(False):
                raise DistributedError(f"rank 0 failed while preparing the run (data cache, autoencoder copy), so "
                                       f"rank {self.rank} stops too; rank 0's error says why")
            yield

    def _broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (the others' ``flag`` is ignored)."""
        t = torch.tensor([int(flag)], device=self._collective_device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def wrap(self, module: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
        """``module`` wrapped in ``DistributedDataParallel`` (the module itself for one process). Its parameters
        must already be on :attr:`device`."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


SINGLE = Distributed()


def is_main_process() -> bool:
    """True unless this is a ``torchrun`` process of rank > 0 (for output outside the loop, e.g. the CLI's
    summary line)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def setup_distributed(device: str | torch.device = "auto", timeout_min: float | None = None) -> Distributed:
    """This process's :class:`Distributed`, joining the process group when ``torchrun`` started several.

    The rank and world size come from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``); a group already initialised (tests with ``torch.multiprocessing``) is used as it is. With
    CUDA, process ``local_rank`` uses ``cuda:local_rank`` and NCCL; otherwise gloo.

    Args:
        device: "auto", "cpu", "cuda" or "mps" (see :func:`lmdm.device.resolve_device`).
        timeout_min: how long a collective waits for the other ranks, in minutes (None: ``LMDM_DIST_TIMEOUT_MIN``
            if set, else :data:`DEFAULT_TIMEOUT_MIN`).

    Raises:
        UsageError: the device is not available, MPS with several processes, a node with fewer GPUs than
            processes, or an ``LMDM_DIST_TIMEOUT_MIN`` that is not a number.
    """
    dev = resolve_device(device)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world == 1:
        return Distributed(device=dev)
    if dev.type == "mps":
        raise UsageError("several processes on MPS are not supported; use --device cpu or one process")
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UsageError(f"local rank {local} has no GPU: this node has {torch.cuda.device_count()}; start "
                             f"torchrun with --nproc-per-node {torch.cuda.device_count()} or fewer")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        if timeout_min is None:
            env = os.environ.get("LMDM_DIST_TIMEOUT_MIN", str(DEFAULT_TIMEOUT_MIN))
            try:
                timeout_min = float(env)
            except ValueError:
                raise UsageError(f"LMDM_DIST_TIMEOUT_MIN must be a number of minutes, got {env!r}") from None
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_min))
    return Distributed(rank=rank, world_size=world, local_rank=local, device=dev)


@dataclass(frozen=True)
class BatchPlan:
    """How one rank computes its share of a global batch.

    Attributes:
        batch_size: the global batch (crops per optimiser step, over all ranks).
        per_rank: rows of this rank (``batch_size / world_size``).
        micro_batch: rows per forward/backward pass.
        accum: micro-batches per optimiser step (``per_rank / micro_batch``).
        rows: this rank's rows of the global batch.
    """

    batch_size: int
    per_rank: int
    micro_batch: int
    accum: int
    rows: slice

    def micro(self) -> list[tuple[slice, slice]]:
        """The micro-batches as ``(rows within this rank's share, rows of the global batch)``."""
        start = self.rows.start
        return [(slice(i, i + self.micro_batch), slice(start + i, start + i + self.micro_batch))
                for i in range(0, self.per_rank, self.micro_batch)]


def batch_plan(batch_size: int, d: Distributed, micro_batch: int = 0) -> BatchPlan:
    """Split ``batch_size`` over ``d.world_size`` ranks and micro-batches of ``micro_batch`` rows (0, or more than
    a rank's share: one pass per rank).

    Raises:
        UsageError: ``batch_size`` is not a multiple of ``world_size``, or ``micro_batch`` does not divide a rank's
            share.
    """
    if batch_size % d.world_size:
        raise UsageError(f"batch_size {batch_size} is not a multiple of the {d.world_size} processes; the global "
                         f"batch is kept whatever the number of processes, so choose a batch size it divides")
    per_rank = batch_size // d.world_size
    # a micro_batch above the process's share means no accumulation: a run with micro_batch 16 on 1 GPU resumes on
    # 8 (8 crops each) with the same global batch, hence the same training
    micro = min(micro_batch or per_rank, per_rank)
    if micro < 1 or per_rank % micro:
        raise UsageError(f"micro_batch {micro_batch} must divide the {per_rank} crops of each of the "
                         f"{d.world_size} processes (batch_size {batch_size})")
    return BatchPlan(batch_size=batch_size, per_rank=per_rank, micro_batch=micro, accum=per_rank // micro,
                     rows=slice(d.rank * per_rank, (d.rank + 1) * per_rank))


def no_sync(module: torch.nn.Module, sync: bool):
    """``module.no_sync()`` when ``sync`` is False and ``module`` is DDP (gradient accumulation without an
    all-reduce per micro-batch); a no-op otherwise."""
    if not sync and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()


@contextlib.contextmanager
def distributed_run(device: str | torch.device = "auto") -> Iterator[Distributed]:
    """This process's :class:`Distributed` for the length of a run (``lmdm train``, ``lmdm arc``): joins the process
    group ``torchrun`` set up (:func:`setup_distributed`) and leaves it at the end, also after an error; a group
    initialised before (a test's, with ``torch.multiprocessing``) is used and left as it is.

    Raises:
        UsageError: as :func:`setup_distributed`.
    """
    owned = not (dist.is_available() and dist.is_initialized())
    place = setup_distributed(device)
    try:
        yield place
    finally:
        if owned and place.active and dist.is_initialized():
            dist.destroy_process_group()
