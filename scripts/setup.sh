#!/usr/bin/env bash
# One-time (and idempotent) set-up on a fresh machine: a virtual environment in .venv with torch, torchvision,
# timm and stitchkit itself (editable, with test extras). Safe to run again: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# Real image data that needs no network: Fashion-MNIST from Debian's package (the demo and some tests use it).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null \
   && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
    || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST runs will look for a local copy" >&2
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch 2.14.1 / torchvision 0.29.1 are the newest this machine's package index allows; pinning them keeps pip
# from reaching for a newer CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/python -c "import stitchkit, torch, timm; print(f'stitchkit {stitchkit.__version__} ready (torch {torch.__version__}, timm {timm.__version__})')"
