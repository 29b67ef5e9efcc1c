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
# The toolkit's root: the first of these with include/cuda.h (nvcc may be a wrapper script).
for root in "${CUDA_ROOT:-}" "${CUDA_HOME:-}" "$(dirname "$(dirname "$(readlink -f "$NVCC")")")" \
            /usr/local/cuda /usr/local/cuda-*; do
    if [ -n "$root" ] && [ -f "$root/include/cuda.h" ]; then export CUDA_ROOT=$root; break; fi
done
[ -n "${CUDA_ROOT:-}" ] || { echo "no CUDA toolkit with include/cuda.h found"; exit 1; }
export PATH="$CUDA_ROOT/bin:$PATH"
# PyCUDA links with -lcuda: give the linker an unversioned name for the driver's libcuda.so.1.
LINKS=$(mktemp -d)
DRIVER=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')
for candidate in "$DRIVER" /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1; do
    if [ -n "$candidate" ] && [ -e "$candidate" ]; then ln -sf "$candidate" "$LINKS/libcuda.so"; break; fi
done
export LIBRARY_PATH="$LINKS:$CUDA_ROOT/lib64:$CUDA_ROOT/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$CUDA_ROOT/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CPATH="$CUDA_ROOT/include${CPATH:+:$CPATH}"
echo "CUDA_ROOT=$CUDA_ROOT; libcuda: $(readlink -f "$LINKS/libcuda.so" 2>/dev/null || echo 'not found')" | tee "$OUT/cuda.txt"
# PyCUDA's build reads ~/.aksetup-defaults.py: its CUDA root, and no cuRAND wrapper where the
# toolkit lacks curand.h (sppcaffe does not use it).
{ echo "CUDA_ROOT = '$CUDA_ROOT'"
  [ -f "$CUDA_ROOT/include/curand.h" ] || echo "CUDA_ENABLE_CURAND = False"; } >> ~/.aksetup-defaults.py
if ! python3 -c "import pycuda.driver" 2>/dev/null; then
    # Built as a wheel into $OUT, so that it comes back: put it into .whl/ and later runs
    # (on a fresh machine) install it instead of building again.
    time python3 -m pip wheel -q --no-index --no-deps --no-build-isolation --no-cache-dir \
        -w "$OUT" .whl/pycuda-*.tar.gz 2>&1 | tail -20 | tee "$OUT/pycuda_build.txt"
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$OUT"/pycuda-*.whl
fi
python3 -c "import pycuda.driver as d; d.init(); print('PyCUDA', d.get_version(), d.Device(0).name())" \
    2>&1 | tee "$OUT/device.txt" || exit 1
export PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m gpu tests 2>&1 | tee "$OUT/gpu_tests.txt" | tail -30
python3 bench/gpu_vs_torch.py 2>&1 | tee "$OUT/bench_train.txt"
if [ -f bench/gpu_detection.py ]; then
    python3 bench/gpu_detection.py 2>&1 | tee "$OUT/bench_detection.txt"
fi
