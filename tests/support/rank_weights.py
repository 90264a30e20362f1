"""``lmdm`` under ``torchrun``, writing every rank's trained modules after the training loop to
``RUN/rank-R.safetensors``, so that a test can check that data parallelism kept the ranks' weights identical (a
missing gradient all-reduce leaves them apart: each rank trains on its own rows and rollouts).

Usage: ``python -m torch.distributed.run ... tests/support/rank_weights.py [lmdm arguments]``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import save_file

import lmdm.train.arc.trainer as arc_trainer
import lmdm.train.pretrain as pretrain
from lmdm.cli import main


def _recording(run_loop):
    def run(settings, task, resume_from=None):
        out = run_loop(settings, task, resume_from=resume_from)
        weights = {f"{name}.{k}": v.detach().cpu().clone() for name, module in task.modules.items()
                   for k, v in module.state_dict().items()}
        save_file(weights, str(Path(settings.run_dir) / f"rank-{settings.distributed.rank}.safetensors"))
        return out
    return run


if __name__ == "__main__":
    arc_trainer.run_loop = _recording(arc_trainer.run_loop)
    pretrain.run_loop = _recording(pretrain.run_loop)
    sys.exit(main(sys.argv[1:]))
