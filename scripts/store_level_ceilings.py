"""Measure a checkpoint's level-guard ceilings on its training data and store them in its ``config.json`` info:
what ``lmdm train`` and ``lmdm arc`` write when they export (``lmdm.streaming.level_guard.folder_ceilings``:
``level_ceiling``, the training split's loudest 0.4 s, and ``frame_level_ceiling``, its ``FRAME_QUANTILE`` 16 ms
mel frame; normalised log-mel units). Run it after changing ``FRAME_QUANTILE`` to bring the bundled checkpoints
along without retraining them; the weights are not touched, and ``config.json`` is replaced atomically.

    python scripts/store_level_ceilings.py data/checkpoints/lmdm-small data/checkpoints/lmdm-small-arc

Checkpoints with the same autoencoder share one measurement (the bundled two do: one decode of ``data/music``'s
training split, about 2 min at one thread).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def main() -> None:
    from lmdm.atomic import write_text
    from lmdm.checkpoint import load_checkpoint, read_config
    from lmdm.streaming.level_guard import folder_ceilings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint folders to update")
    parser.add_argument("--data", default="data/music", help="the data folder they were trained on")
    args = parser.parse_args()
    measured: dict[str, dict] = {}
    for folder in args.checkpoints:
        codec_id = hashlib.sha1((folder / "autoencoder.safetensors").read_bytes()).hexdigest()
        if codec_id not in measured:
            codec = load_checkpoint(folder, device="cpu").codec
            measured[codec_id] = folder_ceilings(codec, args.data)
        meta = read_config(folder)
        before = {k: meta["info"].get(k) for k in measured[codec_id]}
        meta["info"].update(measured[codec_id])
        write_text(folder / "config.json", json.dumps(meta, indent=2))
        print(f"{folder}: {before} -> {measured[codec_id]}")


if __name__ == "__main__":
    main()
