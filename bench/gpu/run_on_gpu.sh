#!/usr/bin/env bash
# On a GPU machine, from the repository root, with .whl/ from fetch_wheels.sh:
# install the wheels, build PyCUDA against this machine's CUDA, then run the
# GPU tests (pytest -m gpu: every device test on the real GPU) and the GPU
# benchmark.  Logs go to $OUT (or ./gpu_results).
set -uo pipefail
OUT=${OUT:-gpu_results}; mkdir -p "$OUT"
SITE=${SITE:-/tmp/sppcaffe-site}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
NVCC=$(command -v nvcc) || { echo "nvcc not found: PyCUDA needs the CUDA toolkit"; exit 1; }
export CUDA_ROOT=${CUDA_ROOT:-$(dirname "$(dirname "$(readlink -f "$NVCC")")")}
# PyCUDA links against libcuda: the driver's copy where the linker finds it, else the toolkit's stub.
export LIBRARY_PATH="/usr/local/nvidia/lib64:$CUDA_ROOT/lib64:$CUDA_ROOT/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CPATH="$CUDA_ROOT/include${CPATH:+:$CPATH}"
if ! python3 -c "import pycuda.driver" 2>/dev/null; then
    time python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
        --target "$SITE" .whl/pycuda-*.tar.gz 2>&1 | tail -20 | tee "$OUT/pycuda_build.txt"
fi
python3 -c "import pycuda.driver as d; d.init(); print('PyCUDA', d.get_version(), d.Device(0).name())" \
    2>&1 | tee "$OUT/device.txt" || exit 1
export PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$OUT/gpu_tests.txt" | tail -30
python3 bench/gpu_vs_torch.py 2>&1 | tee "$OUT/bench_train.txt"
if [ -f bench/gpu_detection.py ]; then
    python3 bench/gpu_detection.py 2>&1 | tee "$OUT/bench_detection.txt"
fi
