#!/usr/bin/env bash
# GPU checks on an NVIDIA machine, torch-free: the GPU tests and the gpu profile's latency on a real artifact.
#
#   pip install onnxruntime-gpu && pip install -e . --no-deps     # the runtime; no exporter stack needed there
#   benchmarks/gpu_check.sh TINY_ARTIFACT FP16_ARTIFACT OUT_DIR
#
# TINY_ARTIFACT: an artifact of the test suite's tiny BERT, exported on any machine (the tests' tiny_artifact fixture;
# BERTSHIP_TINY_ARTIFACT points the fixture at it). FP16_ARTIFACT: e.g. `bertship export --recipe fp16 --backends
# onnxruntime --out minilm-fp16`. The CUDA libraries onnxruntime-gpu needs must be on the loader's path.
set -euo pipefail
tiny=$(realpath "$1"); art=$(realpath "$2"); out=$(realpath -m "$3")
mkdir -p "$out"
cd "$(dirname "$0")/.."
nvidia-smi -L | tee "$out/gpu.txt"
python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())" | tee -a "$out/gpu.txt"
BERTSHIP_TINY_ARTIFACT="$tiny" python3 -m pytest -q -m gpu tests/test_bench_live.py -rs 2>&1 | tee "$out/pytest.txt"
python3 -m bertship.cli bench "$art" --profile gpu --shapes 1x128,8x128,32x128 --json "$out/gpu-bench.json" \
    --markdown "$out/gpu-bench.md"
