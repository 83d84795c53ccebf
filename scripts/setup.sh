#!/usr/bin/env bash
# One-time (and idempotent) set-up on a fresh machine: a virtual environment in .venv with torch, torchvision,
# timm and stitchkit itself (editable, with test extras). Safe to run again: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# Debian packages, each only where missing and only as root with apt-get; a failed install is a warning, since
# what needs the package skips without it. The package index is fetched once, when the first install needs it.
APT_UPDATED=
apt_install() {
  command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] || return 0
  [ -n "$APT_UPDATED" ] || { apt-get update -qq >/dev/null && APT_UPDATED=1; } || return 1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
# Real image data that needs no network: Fashion-MNIST from Debian's package (the demo and some tests use it).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  apt_install dataset-fashion-mnist \
    || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST runs will look for a local copy" >&2
fi
# Chromium: tests/test_report_page.py renders the report page in it at a laptop's and a phone's width.
if ! command -v chromium >/dev/null; then
  apt_install chromium || echo "warning: could not install chromium; the report page's browser test will skip" >&2
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch 2.14.1 / torchvision 0.29.1 are the newest this machine's package index allows; pinning them keeps pip
# from reaching for a newer CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/python -c "import stitchkit, torch, timm; print(f'stitchkit {stitchkit.__version__} ready (torch {torch.__version__}, timm {timm.__version__})')"
