#!/usr/bin/env bash
# The GPU check of issue 17, in one go on a CUDA machine, installing nothing: the classifier at batch 1..64 in
# bf16/fp16 against fp32 (latency, utterances/s, agreement with the CPU's scores), then the daemon at 500 and
# 2,000 simulated real-time streams on the GPU. One table each; about 5 minutes.
#   bench/gpu_check.sh [MODEL_DIR]      (default models/default; FSDD from ../shared/data/fsdd for the streams)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/default}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -m bench.gpu_check --model "$MODEL"
# 500 and 2,000 streams: each sends one FSDD digit every ~3 s at real-time pace for 40 s.
ulimit -n 16384 2>/dev/null || true  # 2,000 client and daemon sockets each
"$PY" -m bench.daemon_load --model "$MODEL" --streams 500 2000 --duration 40 --flood 0 \
  --set model.device='"cuda"' --set sources.max_streams=4096
