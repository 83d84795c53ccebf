#!/usr/bin/env bash
# The GPU check as one prepared command for the lent device machine (see /work/.library/device/README.md):
#
#   run(command="bash scripts/device_gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# That machine has torch, torchvision and timm but no network and neither omegaconf nor antlr4; carry them as wheels
# in .whl/ (ignored by git through .git/info/exclude), made here once with:
#
#   mkdir -p .whl && echo /.whl/ >> .git/info/exclude
#   .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl omegaconf==2.3.0
#   .venv/bin/pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3   # an sdist on PyPI: build the wheel here
#
# Everything the check prints goes to $OUT/log as it comes and its figures to $OUT/check/gpu_check.json (saved after
# each section), so a run stopped at its limit still brings back what it measured.
set -o pipefail
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT/check"
if ! python3 -c "import omegaconf" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "device_gpu_check: omegaconf is missing and .whl/ holds no wheels; see this script's header" >&2; exit 2; }
    # Pure-Python wheels are zip files: unpacked onto the path they import as installed, with no pip needed (the
    # device's python3 is not known to have one).
    for wheel in .whl/*.whl; do python3 -m zipfile -e "$wheel" /tmp/site || exit 2; done
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    python3 -c "import omegaconf, antlr4" || { echo "device_gpu_check: the carried wheels do not import" >&2; exit 2; }
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'cpus', __import__('os').cpu_count())" 2>&1 | tee -a "$OUT/log"
python3 scripts/gpu_check.py --out "$OUT/check" "$@" 2>&1 | tee -a "$OUT/log"
