#!/usr/bin/env bash
# The README's ablation tables: LMDMs trained on the same data at equal CPU time (one thread each, so two can share
# a 2-core machine), then measured side by side with `lmdm eval` at the default sampler and with Euler 32 steps,
# CFG 1 (the velocity-field check). The first three change the latent and the timesteps (2000 steps each); the
# last two change the DiT's size at the third's recipe and CPU time (fewer steps: 1000 at width 384, 1150 at
# depth 12). Resumable: rerun after a kill and finished runs are skipped.
# Needs data/music (`lmdm data build --hours 10`) and runs/autoencoder/final (`lmdm autoencoder train
# --config configs/autoencoder.json`).
set -euo pipefail
cd "$(dirname "$0")/.."
LMDM=.venv/bin/lmdm
runs=(raw-mel-logitnormal raw-mel-uniform20 latent64-uniform20 latent64-wide384 latent64-deep12)
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
