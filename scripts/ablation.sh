#!/usr/bin/env bash
# The README's ablation table: three LMDMs trained for the same steps on the same data (one thread each, so two
# can share a 2-core machine), then measured side by side with `lmdm eval` at the default sampler and with
# Euler 32 steps, CFG 1 (the velocity-field check). Resumable: rerun after a kill and finished runs are skipped.
# Needs data/music (`lmdm data build --hours 10`) and runs/autoencoder/final (`lmdm autoencoder train
# --config configs/autoencoder.json`).
set -euo pipefail
cd "$(dirname "$0")/.."
LMDM=.venv/bin/lmdm
runs=(raw-mel-logitnormal raw-mel-uniform20 latent64-uniform20)
for r in "${runs[@]}"; do
  if [ ! -f "runs/ablation/$r/final/config.json" ]; then
    if [ -d "runs/ablation/$r/ckpt" ]; then
      $LMDM --quiet train --resume --run-dir "runs/ablation/$r"
    else
      $LMDM --quiet train --config "configs/ablation/$r.json"
    fi
  fi
done
ckpts=("${runs[@]/#/runs/ablation/}")
ckpts=("${ckpts[@]/%//final}")
$LMDM --quiet eval --checkpoint "${ckpts[@]}" --json runs/ablation/eval-default.json --plots runs/ablation/plots
$LMDM --quiet eval --checkpoint "${ckpts[@]}" --sampler euler --steps 32 --cfg 1 --json runs/ablation/eval-euler32.json
