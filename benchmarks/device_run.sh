#!/usr/bin/env bash
# On a device machine (after benchmarks/device_prep.sh here, with .device carried): install the
# carried wheels beside the image's torch, say what the machine is, and run the GPU check into
# $OUT (or ./gpu-check-out), at most about eight and a half minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .device/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, pycolmap, numpy; print('torch', torch.__version__, 'pycolmap', \
pycolmap.__version__, 'numpy', numpy.__version__)" || exit 3
python3 benchmarks/gpu_check.py --out "$out" "$@"
status=$?
cat "$out/gpu_check.md"
exit $status
