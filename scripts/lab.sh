#!/usr/bin/env bash
# Start JupyterLab on the notebooks with lmdm's server configuration (TCP_NODELAY on kernel websockets).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/jupyter lab --config=jupyter/jupyter_server_config.py "$@" notebooks/
