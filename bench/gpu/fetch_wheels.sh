#!/usr/bin/env bash
# Run where pip reaches PyPI: put into .whl/ (git-ignored) what a GPU machine
# with CUDA, Python 3.12 and NumPy but no network needs to run sppcaffe's GPU
# backend: PyCUDA's source (it must be built against that machine's driver),
# its pure-Python needs, lmdb, and the protobuf runtime our generated schema
# module needs (>= 7.35).  Carry .whl there and run run_on_gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY_VERSION:-3.12}
mkdir -p .whl
python3 -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d .whl pycuda
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl pytools platformdirs mako siphash24 lmdb 'protobuf>=7.35.1,<8'
ls -l .whl
