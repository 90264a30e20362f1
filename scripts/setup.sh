#!/usr/bin/env bash
# One-command set-up of lmdm: a virtual environment in .venv with the CPU build of torch, lmdm (editable) and
# its test tools. As root on Debian/Ubuntu it also installs, where missing, FluidSynth and a General MIDI SoundFont
# (needed to build training data and by the data tests) and Chromium (the browser tests drive the widgets in it),
# so that the README's test command `.venv/bin/python -m pytest` passes on a fresh machine.
#
#   bash scripts/setup.sh            # then: .venv/bin/lmdm generate "a slow Bach chorale on church organ"
#
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0, the CPU wheel on lmdm's machines; on a GPU
# machine use e.g. TORCH_SPEC=torch). PYTHON picks the interpreter (default python3, 3.10 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

missing=()
command -v fluidsynth >/dev/null 2>&1 || missing+=(fluidsynth fluid-soundfont-gm)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
      || echo "note: apt-get could not install ${missing[*]}; the tests that need them will say so"
  else
    echo "note: not installed: ${missing[*]}. FluidSynth is needed for 'lmdm data build' and the data tests,"
    echo "      Chromium for the browser tests (skipped without it). Debian/Ubuntu:"
    echo "      sudo apt-get install ${missing[*]}   (or run this script as root); macOS: brew install fluid-synth"
  fi
fi

echo "== creating .venv with $($PYTHON --version)"
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
echo "== installing $TORCH_SPEC"
.venv/bin/python -m pip install -q "$TORCH_SPEC"
echo "== installing lmdm and its dependencies"
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -c "import torch, lmdm; print('lmdm', lmdm.__version__, '| torch', torch.__version__)"
.venv/bin/python scripts/librosa_warmup.py  # compile librosa's numba kernels once, before anything runs them in parallel
echo "== done. Try: .venv/bin/lmdm generate \"a slow Bach chorale on church organ\" --seconds 30 --out chorale.wav"
