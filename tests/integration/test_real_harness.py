"""``--model iit`` on the real Gemma-3-270M (Q4_K_M GGUF, dequantized to fp32), marked ``real_model``: lm-eval's own
evaluator on the offline IFEval task gives the generations and the accuracies of ``iit eval ifeval``'s path, and its
log-likelihoods equal the ranking scorer's on LIMA pairs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from implicit_it.config import GenerateConfig  # noqa: E402
from implicit_it.engines import generate  # noqa: E402
from implicit_it.evaluation.harness import TASKS_DIR, ImplicitItLM  # noqa: E402
from implicit_it.evaluation.ifeval import load_ifeval, score_ifeval  # noqa: E402
from implicit_it.formats import encode_example  # noqa: E402
from implicit_it.probes import OUTPUT, PairForward, read_ranking_source, score_groups  # noqa: E402
from implicit_it.probes.forward import EncodedGroup  # noqa: E402
from implicit_it.rules import RuleConfig  # noqa: E402

pytestmark = pytest.mark.real_model

N_PROMPTS, TOKENS = 4, 48


def test_lm_eval_ifeval_on_the_rule_adapter_matches_iit_eval_ifeval(shared_data, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(TASKS_DIR.parents[1])  # the task reads ../shared/data from the repository root
    lm = ImplicitItLM(model="gemma-3-270m", system="rules")
    res = simple_evaluate(
        model=lm,
        tasks=["iit_ifeval"],
        task_manager=TaskManager(include_path=str(TASKS_DIR)),
        limit=N_PROMPTS,
        log_samples=True,
        gen_kwargs=f"max_gen_toks={TOKENS}",
    )
    samples = res["samples"]["iit_ifeval"]
    by_key = {p.key: p for p in load_ifeval()}
    prompts = [by_key[s["doc"]["key"]] for s in samples]
    ours = generate(
        "gemma-3-270m",
        [p.prompt for p in prompts],
        GenerateConfig(max_new_tokens=TOKENS),
        rule_config=RuleConfig(),
        load=lambda: lm.loaded,
        show_progress=False,
    )
    assert [s["resps"][0][0] for s in samples] == [r.output for r in ours.results]
    summary = score_ifeval(prompts, [r.output for r in ours.results], n_boot=10).entries[0]
    metrics = res["results"]["iit_ifeval"]
    for lm_name, our_name in [
        ("prompt_level_strict_acc", "prompt_strict"),
        ("prompt_level_loose_acc", "prompt_loose"),
        ("inst_level_strict_acc", "instruction_strict"),
        ("inst_level_loose_acc", "instruction_loose"),
    ]:
        assert metrics[f"{lm_name},none"] == pytest.approx(summary[our_name]["accuracy"])


def test_loglikelihood_equals_the_ranking_scorer_on_lima_pairs(shared_data):
    from lm_eval.api.instance import Instance

    source = read_ranking_source(shared_data / "lima" / "val_reference_gpt35.json", limit=6)
    lm = ImplicitItLM(model="gemma-3-270m", max_length=512)
    tok = lm.loaded.tokenizer
    groups, texts = [], []
    for gi, (ins, own) in enumerate(zip(source.instructions, source.own_response, strict=False)):
        ex = encode_example(tok, "tulu", ins, source.pool[own], max_length=384)
        response = tuple(ex.input_ids[ex.n_prompt_tokens : -1])  # EOS (or the cut's last token) left out
        groups.append(EncodedGroup(gi, tuple(ex.input_ids[: ex.n_prompt_tokens]), (response,), (False,)))
        texts.append((ins, tok.decode(list(response))))
    ranking = score_groups(PairForward(lm.loaded), groups).totals[OUTPUT][:, 0]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=t, idx=i) for i, t in enumerate(texts)]
    ours = lm.loglikelihood(requests)
    assert [len(lm.encode_pair(*t).ids) - lm.encode_pair(*t).target_start for t in texts] == [len(g.responses[0]) for g in groups]
    np.testing.assert_allclose([lp for lp, _ in ours], ranking, rtol=1e-4)
