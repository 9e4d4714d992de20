#!/usr/bin/env bash
# One-command check of the CUDA paths (bf16/fp16 autocast, LSTM and Transformer training throughput, NCCL with one
# process, captioning speed), under 5 minutes on one GPU. Uses the project's virtual environment when there is one
# (README's set-up); installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec timeout 300 "$PY" bench/gpu_check.py "$@"
