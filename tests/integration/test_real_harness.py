"""``--model iit`` on the real Gemma-3-270M (Q4_K_M GGUF, dequantized to fp32), marked ``real_model``: lm-eval's own
evaluator on the offline IFEval task gives the generations and the accuracies of ``iit eval ifeval``'s path, and its
``iit_lima_ranking`` task (the paper's response ranking) logs the ranking scorer's log-likelihoods."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from implicit_it.config import GenerateConfig  # noqa: E402
from implicit_it.engines import generate  # noqa: E402
from implicit_it.evaluation.harness import TASKS_DIR, ImplicitItLM  # noqa: E402
from implicit_it.evaluation.ifeval import load_ifeval, score_ifeval  # noqa: E402
from implicit_it.formats import encode_example  # noqa: E402
from implicit_it.probes import OUTPUT, PairForward, score_groups  # noqa: E402
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


def test_the_ranking_task_in_lm_eval_gives_the_ranking_scorers_log_likelihoods(shared_data, monkeypatch):
    """lm-eval's evaluator on ``iit_lima_ranking`` (the paper's response ranking as a multiple-choice task): every
    choice's log-likelihood in its per-sample log equals the ranking room's scorer on the same (instruction, response)
    tokens, EOS left out; its ``acc`` is the fraction of instructions whose own response scores higher."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(TASKS_DIR.parents[1])
    lm = ImplicitItLM(model="gemma-3-270m")
    res = simple_evaluate(model=lm, tasks=["iit_lima_ranking"], task_manager=TaskManager(include_path=str(TASKS_DIR)), limit=6,
                          log_samples=True)  # fmt: skip
    samples = res["samples"]["iit_lima_ranking"]
    tok = lm.loaded.tokenizer
    groups = []
    for gi, s in enumerate(samples):
        responses = []
        for choice in s["doc"]["choices"]:
            ex = encode_example(tok, "tulu", s["doc"]["instruction"], choice)
            responses.append(tuple(ex.input_ids[ex.n_prompt_tokens : -1]))  # EOS left out: lm-eval scores text
            prompt = tuple(ex.input_ids[: ex.n_prompt_tokens])
        groups.append(EncodedGroup(gi, prompt, tuple(responses), (False, False)))
    ranking = score_groups(PairForward(lm.loaded), groups).totals[OUTPUT]
    logged = np.array([[r[0][0] for r in s["resps"]] for s in samples], dtype=float)
    np.testing.assert_allclose(logged, ranking, rtol=1e-4)
    wins = logged[:, 0] > logged[:, 1]
    assert res["results"]["iit_lima_ranking"]["acc,none"] == pytest.approx(wins.mean())
