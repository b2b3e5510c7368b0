#!/usr/bin/env bash
# Before a device session runs benchmarks/gpu_check.py (run this here, on the development
# machine, which reaches PyPI): the device image has torch but no pycolmap, its Python is 3.12,
# and ../shared does not travel. This puts into .device/ (git-ignored, about 47 MB):
#   .device/whl/  pycolmap's wheel for CPython 3.12 on x86-64 Linux (the version installed here)
#   .device/vggt_1b_golden.npz  the golden input of the precision section
# Then, on the device (one call, carry [".device"], timeout 600):
#   bash benchmarks/device_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(python -c "import pycolmap; print(pycolmap.__version__)")
mkdir -p .device/whl
rm -f .device/whl/*.whl
python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .device/whl "pycolmap==${version}"
golden=../shared/golden/vggt_1b_golden.npz
if [ -f "$golden" ]; then
    cp "$golden" .device/
else
    echo "warning: $golden not found: the precision section will use a random input" >&2
fi
du -sh .device
