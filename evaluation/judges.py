"""Judges for AlpacaEval, each an alpaca_eval annotator config written to disk.

* ``gpt4_turbo``: alpaca_eval's own ``weighted_alpaca_eval_gpt4_turbo`` (the paper's judge; needs
  ``OPENAI_API_KEY`` or an alpaca_eval client-config file);
* an OpenAI-compatible server by URL (vLLM, llama.cpp, TGI, ...): the same prompt and the same
  log-probability parser, pointed at that server's model;
* ``local:SPEC``: any model implicit-it loads (a local HF directory, a GGUF file, an embedded
  name). alpaca_eval's ``huggingface_local_completions`` cannot load a model on CPU with
  transformers 5 (it passes ``load_in_8bit``), so the completion function is ours: one forward
  pass, returning the next-token log-probabilities in OpenAI's layout, so that alpaca_eval's
  ``logprob_parser`` turns them into the same weighted preference the GPT-4-turbo judge gives.

* ``metric:NAME``: a judge-free metric validated against GPT-4's judgments (``iit eval judge-agreement``;
  :mod:`.judge_agreement`), e.g. ``metric:gated_reference_similarity``. It needs *gold* answers (AlpacaEval's GPT-4
  references, ``eval_set.json``'s ``output``): of the two outputs, the one the metric scores higher against the gold
  answer wins (preference 1 or 2; 1.5 for a tie), so win rates keep the paper's pairwise shape.

Every judge is checked before any work starts (:meth:`Judge.preflight`): no key, a server that
does not answer, or a model path that does not exist is one clear error.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from implicit_it.errors import CannotProceed, ImplicitItError, UserError
from implicit_it.io import atomic_write_text

GPT4_TURBO = "weighted_alpaca_eval_gpt4_turbo"
# The two answer tokens of alpaca_eval's classification prompt: "m" = output_1, "M" = output_2.
ANSWER_TOKENS = ("m", "M")


class JudgeUnavailable(CannotProceed):
    """The judge cannot be used (no key, server down, model missing); raised before any work."""


LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
ALLOW_PLAIN_HTTP_ENV = "IIT_ALLOW_PLAIN_HTTP_KEY"  # =1: send the API key over plain http anyway (a trusted network)
_WARNED_PLAIN_HTTP: set[str] = set()


class KeyInClear(JudgeUnavailable):
    """An API key would travel unencrypted (plain http to another host, or a redirect): refused."""


def api_key_set() -> bool:
    return bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEYS"))


def check_key_transport(url: str) -> None:
    """Refuse to send an API key in clear text: plain ``http://`` to a host other than this machine, with a key set.
    ``IIT_ALLOW_PLAIN_HTTP_KEY=1`` opts in (a trusted network); the key is then sent, with one warning on stderr."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or (parts.hostname or "").lower() in LOCAL_HOSTS or not api_key_set():
        return
    if os.environ.get(ALLOW_PLAIN_HTTP_ENV) != "1":
        raise KeyInClear(
            f"--judge {url}: plain http to another host would send OPENAI_API_KEY unencrypted; use https, an SSH tunnel "
            f"to localhost, unset OPENAI_API_KEY for a server that needs no key, or set {ALLOW_PLAIN_HTTP_ENV}=1 to send it anyway"
        )
    if url not in _WARNED_PLAIN_HTTP:
        _WARNED_PLAIN_HTTP.add(url)
        print(f"WARNING: {ALLOW_PLAIN_HTTP_ENV}=1: OPENAI_API_KEY is sent to {url} unencrypted.", file=sys.stderr, flush=True)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect with the Authorization header, to any host: stop and name the target instead."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise KeyInClear(
            f"judge server {req.full_url} answered {code}, a redirect to {newurl}; the API key is not sent on to it. "
            "Give the final URL as --judge"
        )


def _clf_prompt_path() -> Path:
    import alpaca_eval

    return Path(alpaca_eval.__file__).parent / "evaluators_configs" / "alpaca_eval_clf_gpt4_turbo" / "alpaca_eval_clf.txt"


def _logprob_annotator(name: str, completions: dict[str, Any], prompt_template: str | Path) -> dict[str, Any]:
    return {
        name: {
            "prompt_template": str(prompt_template),
            "completions_kwargs": completions,
            "fn_completion_parser": "logprob_parser",
            "completion_parser_kwargs": {
                "numerator_token": ANSWER_TOKENS[0],
                "denominator_tokens": list(ANSWER_TOKENS),
                "is_binarize": False,
            },
            "completion_key": "completions_all",
            "batch_size": 1,
        }
    }


@dataclass
class Judge:
    """A parsed ``--judge`` value. ``write_config`` gives the annotator config path for alpaca_eval."""

    kind: str  # "gpt4_turbo" | "openai_compatible" | "local" | "metric"
    target: str  # annotator name, server URL, model SPEC, or metric name
    model_name: str | None = None  # the served model (openai_compatible)
    fn_completions: Callable[..., dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        if self.kind == "gpt4_turbo":
            return GPT4_TURBO
        if self.kind == "openai_compatible":
            return f"openai_compatible:{self.model_name}@{self.target}"
        return f"{self.kind}:{self.target}"

    @property
    def annotator_name(self) -> str:
        """The annotator column in alpaca_eval's annotations (and its cache key)."""
        import re

        return GPT4_TURBO if self.kind == "gpt4_turbo" else "iit_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("_")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "target": self.target,
            "model_name": self.model_name,
            "annotator": self.annotator_name,
        }

    # ---- checks before any work -------------------------------------------------------------
    def preflight(self) -> None:
        if self.kind == "gpt4_turbo":
            from alpaca_eval import constants

            has_key = bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEYS"))
            if not has_key and not Path(constants.OPENAI_CLIENT_CONFIG_PATH).is_file():
                raise JudgeUnavailable(
                    "judge gpt4_turbo needs OPENAI_API_KEY (or OPENAI_CLIENT_CONFIG_PATH pointing to an alpaca_eval "
                    "client config); neither is set. Use --judge URL for an OpenAI-compatible server or --judge local:SPEC."
                )
        elif self.kind == "openai_compatible":
            served = list_served_models(self.target)
            if self.model_name is None:
                if not served:
                    raise JudgeUnavailable(f"judge server {self.target} lists no models; pass --judge-model NAME")
                self.model_name = served[0]
            elif served and self.model_name not in served:
                raise JudgeUnavailable(f"judge server {self.target} does not serve {self.model_name!r} (it serves {served})")
        elif self.kind == "metric":
            from .judge_agreement import METRICS

            if self.target not in METRICS or METRICS[self.target].baseline:
                candidates = ", ".join(n for n, cls in METRICS.items() if not cls.baseline)
                raise JudgeUnavailable(f"judge metric:{self.target}: no such metric; choose one of {candidates}")
        else:
            from implicit_it.models import resolve_model_spec

            try:
                source = resolve_model_spec(self.target)
            except (ImplicitItError, ValueError, OSError) as exc:
                raise JudgeUnavailable(f"local judge {self.target!r}: {exc}") from None
            if not source.is_local:
                from implicit_it.models import hub_offline

                if hub_offline():
                    raise JudgeUnavailable(f"local judge {self.target!r} is a hub id and the hub is offline (HF_HUB_OFFLINE)")

    # ---- the annotator config alpaca_eval reads ---------------------------------------------
    def write_config(self, judge_dir: str | Path) -> str | Path:
        """Return what to pass as ``annotators_config``: alpaca_eval's own config name, or a
        ``configs.yaml`` written to ``judge_dir`` (kept with the results, so the judge is on record)."""
        if self.kind == "gpt4_turbo":
            return GPT4_TURBO
        judge_dir = Path(judge_dir)
        if self.kind == "openai_compatible":
            completions: dict[str, Any] = {
                "model_name": self.model_name,
                "max_tokens": 1,
                "temperature": 1,
                "logprobs": True,
                "top_logprobs": 5,
                "requires_chatml": True,
                "openai_api_base": self.target,
                # a config path that cannot exist, so alpaca_eval builds the client from openai_api_base
                "client_config_path": str(judge_dir / "no_client_config.yaml"),
            }
            if not api_key_set():
                completions["openai_api_keys"] = ["EMPTY"]  # local servers accept any key; a real key is never written
            else:
                check_key_transport(self.target)  # alpaca_eval's client sends the key with every request
            config = _logprob_annotator(self.annotator_name, completions, _clf_prompt_path())
        else:
            prompt, special = render_local_prompt(self.target)
            prompt_path = atomic_write_text(judge_dir / "prompt.txt", prompt)
            config = _logprob_annotator(
                self.annotator_name, {"model_name": self.target, "add_special_tokens": special}, prompt_path.resolve()
            )
        return atomic_write_text(judge_dir / "configs.yaml", yaml.safe_dump(config, sort_keys=False)).resolve()

    def annotator_kwargs(self) -> dict[str, Any]:
        return {"fn_completions": self.fn_completions} if self.fn_completions is not None else {}


def parse_judge(spec: str, model_name: str | None = None) -> Judge:
    """``gpt4_turbo`` | ``http(s)://host:port/v1`` (with ``model_name`` or the server's first model) | ``local:SPEC``."""
    spec = spec.strip()
    if spec in ("gpt4_turbo", GPT4_TURBO):
        return Judge("gpt4_turbo", GPT4_TURBO)
    if spec.startswith(("http://", "https://")):
        if not spec.split("://", 1)[1].strip("/"):
            raise UserError(f"--judge {spec!r}: the URL names no server (e.g. http://localhost:8000/v1)")
        check_key_transport(spec.rstrip("/"))
        return Judge("openai_compatible", spec.rstrip("/"), model_name)
    if spec.startswith("local:") and spec[len("local:") :].strip():
        return Judge("local", spec[len("local:") :].strip(), fn_completions=local_logprob_completions)
    if spec.startswith("metric:") and spec[len("metric:") :].strip():
        return Judge("metric", spec[len("metric:") :].strip())
    raise UserError(
        f"--judge {spec!r}: expected gpt4_turbo, an OpenAI-compatible server URL (http://host:port/v1), "
        "local:SPEC (a model directory, GGUF file or embedded name) or metric:NAME (a judge-free metric)"
    )


def list_served_models(base_url: str, timeout: float = 5.0) -> list[str]:
    """``GET {base_url}/models`` of an OpenAI-compatible server; an unreachable server is JudgeUnavailable."""
    check_key_transport(base_url)
    req = urllib.request.Request(
        base_url.rstrip("/") + "/models", headers={"Authorization": "Bearer " + os.environ.get("OPENAI_API_KEY", "EMPTY")}
    )
    try:
        with urllib.request.build_opener(_NoRedirects).open(req, timeout=timeout) as resp:
            body = json.loads(resp.read().decode("utf-8"))
    except JudgeUnavailable:  # a redirect refused (KeyInClear): say so, not "unreachable"
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: a body that is not JSON
        raise JudgeUnavailable(f"judge server {base_url} is not reachable ({exc}); start it or check the URL") from None
    return [m.get("id") for m in body.get("data", []) if isinstance(m, dict) and m.get("id")]


# ---- the local judge ----------------------------------------------------------------------------
def _split_chatml(text: str) -> list[dict[str, str]]:
    """alpaca_eval's classification prompt is ChatML text; split it into chat messages."""
    messages = []
    for block in text.split("<|im_start|>")[1:]:
        role, _, content = block.partition("\n")
        messages.append({"role": role.strip(), "content": content.split("<|im_end|>")[0].strip()})
    return messages


def render_local_prompt(spec: str) -> tuple[str, bool]:
    """alpaca_eval's judge prompt in the local model's own chat template (placeholders kept), and
    whether the tokenizer should add special tokens (only when there is no template to carry BOS)."""
    from implicit_it.models import load_tokenizer

    tok = load_tokenizer(spec)
    messages = _split_chatml(_clf_prompt_path().read_text())
    if getattr(tok, "chat_template", None):
        try:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates without a system role: fold it into the user turn
            merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
            text = tok.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        return text, False
    plain = "\n\n".join(m["content"] for m in messages) + "\n\n"
    return plain, True


@lru_cache(maxsize=2)
def _load_judge_model(spec: str) -> Any:
    from implicit_it.models import load_model

    return load_model(spec, device="cpu", use_process_cache=False)


def answer_token_ids(tokenizer: Any, answers: Sequence[str] = ANSWER_TOKENS) -> list[int]:
    ids = []
    for a in answers:
        enc = tokenizer.encode(a, add_special_tokens=False)
        if len(enc) != 1:
            raise JudgeUnavailable(f"local judge: the answer {a!r} is {len(enc)} tokens in this tokenizer (needs 1)")
        ids.append(enc[0])
    return ids


def local_logprob_completions(
    prompts: Sequence[str], model_name: str, add_special_tokens: bool = False, top_logprobs: int = 5, **_: Any
) -> dict[str, list]:
    """alpaca_eval completion function for a local model: next-token log-probs after the prompt.

    The answer tokens' log-probs are always included next to the top-k (a small judge may rank
    neither in its top 5), so the preference is p(m) / (p(m) + p(M)) as for GPT-4-turbo. A prompt
    longer than the model's context gets no log-probs, which alpaca_eval records as a missing
    preference."""
    import torch

    loaded = _load_judge_model(model_name)
    tok, model = loaded.tokenizer, loaded.model
    answer_ids = answer_token_ids(tok)
    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    completions, times, done = [], [], []
    for prompt in prompts:
        t0 = time.perf_counter()
        ids = tok.encode(prompt, add_special_tokens=add_special_tokens)
        if len(ids) > limit:  # no answer log-probs: logprob_parser records a missing preference
            content: list[dict[str, Any]] = [{"token": "", "logprob": 0.0, "top_logprobs": []}]
        else:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids], device=loaded.device)).logits[0, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            top = torch.topk(logp, top_logprobs).indices.tolist()
            chosen = top[0]
            entries = [{"token": tok.decode([i]), "logprob": float(logp[i])} for i in dict.fromkeys(top + answer_ids)]
            content = [{"token": tok.decode([chosen]), "logprob": float(logp[chosen]), "top_logprobs": entries}]
        text = content[0]["token"] or " "
        done.append({"text": text, "logprobs": {"content": content}, "total_tokens": len(ids)})
        completions.append(text)
        times.append(time.perf_counter() - t0)
    return {"completions": completions, "completions_all": done, "price_per_example": [0.0] * len(prompts), "time_per_example": times}
