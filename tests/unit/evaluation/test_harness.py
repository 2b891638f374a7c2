"""implicit-it systems as an lm-eval model (``iit``), on tiny random models: log-likelihoods agree with the ranking
scorer, the rule adapter's log-likelihood is the distribution it decodes from, lm-eval's own pipeline runs the
repository's offline IFEval task, and its per-sample logs feed the paired tests."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from implicit_it.config import GenerateConfig  # noqa: E402
from implicit_it.engines import generate  # noqa: E402
from implicit_it.errors import ConfigError, DataFormatError  # noqa: E402
from implicit_it.evaluation.harness import (  # noqa: E402
    TASKS_DIR,
    ImplicitItLM,
    ScoringItem,
    cut_at,
    register,
    rolling_items,
    rule_config_of,
)
from implicit_it.evaluation.paired import paired_tests, read_sample_log, sign_flip_p  # noqa: E402
from implicit_it.formats import encode_example, encode_prompt, get_format, instruction_offset  # noqa: E402
from implicit_it.probes.forward import EncodedGroup, PairForward  # noqa: E402
from implicit_it.probes.scoring import OUTPUT, score_groups  # noqa: E402

PAIRS = [
    ("Name three colours.", "Red, green and blue."),
    ("Write a haiku about rain.", "Rain on the window\nsoft drums in the quiet night\nthe street shines silver"),
    ("", "An answer to nothing at all."),
    ("What is 2 + 2?", " 4"),
]


def _requests(kind: str, args_list):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(args_list)]


@pytest.fixture(scope="module")
def base_lm(tiny_model_dir):
    return ImplicitItLM(model=str(tiny_model_dir), max_batch_tokens=64)


def test_loglikelihood_equals_the_ranking_scorers_response_logprobs(base_lm):
    """The ranking room's fast scorer (prefix reuse, other batching) on the same prompt and response tokens, EOS left
    out (lm-eval continuations are text): the same sums."""
    tok = base_lm.loaded.tokenizer
    groups = []
    for gi, (ins, resp) in enumerate(PAIRS):
        ex = encode_example(tok, "tulu", ins, resp)
        groups.append(
            EncodedGroup(gi, tuple(ex.input_ids[: ex.n_prompt_tokens]), (tuple(ex.input_ids[ex.n_prompt_tokens : -1]),), (False,))
        )
    ranking = score_groups(PairForward(base_lm.loaded), groups).totals[OUTPUT][:, 0]
    ours = base_lm.loglikelihood(_requests("loglikelihood", PAIRS))
    np.testing.assert_allclose([lp for lp, _ in ours], ranking, rtol=1e-5, atol=1e-4)
    assert all(np.isfinite(lp) and lp < 0 for lp, _ in ours)


def test_is_greedy_holds_for_the_systems_own_greedy_continuation(tiny_llama_dir):
    """Greedy decoding from the product of experts gives tokens that the same system, scoring them teacher-forced,
    finds greedy at every step (the rules' state — response length, tokens used — is rebuilt from the ids); the base
    model alone finds them neither greedy nor as likely. Token ids, not text: a random model's tokens need not be the
    ones its tokenizer would choose for the decoded text."""
    rules = ImplicitItLM(model=str(tiny_llama_dir), system="rules")
    base = ImplicitItLM(model=str(tiny_llama_dir))
    tok = rules.loaded.tokenizer
    prompts = [ins for ins, _ in PAIRS if ins]
    decoded = generate(
        str(tiny_llama_dir),
        prompts,
        GenerateConfig(max_new_tokens=12, batch_size=2),
        rule_config=rules.rule_config,
        load=lambda: rules.loaded,
        show_progress=False,
    )
    items = []
    for p, r in zip(prompts, decoded.results, strict=True):
        prompt = encode_prompt(tok, "tulu", p)
        items.append(ScoringItem(prompt + r.token_ids, len(prompt), len(prompt), instruction_offset(tok, "tulu", p, prompt)))
    with_rules, alone = rules.scorer.score(items), base.scorer.score(items)
    assert all(s.is_greedy and s.n_tokens > 0 for s in with_rules)
    assert not all(s.is_greedy for s in alone)
    assert all(abs(a.logprob - b.logprob) > 1e-3 for a, b in zip(with_rules, alone, strict=False))
    text = [(p, r.output) for p, r in zip(prompts, decoded.results, strict=False)]  # the text path: the same scorer on re-encoded ids
    assert [lp for lp, _ in rules.loglikelihood(_requests("loglikelihood", text))] == [
        s.logprob for s in rules.scorer.score([rules.encode_pair(*t) for t in text])
    ]


def test_rolling_loglikelihood_is_the_sum_of_its_windows_and_one_window_for_a_short_text(base_lm):
    text = "A text scored as a whole, as perplexity tasks do. " * 3
    whole = base_lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))[0]
    as_pair = base_lm.loglikelihood(_requests("loglikelihood", [("", text)]))[0][0]
    assert whole == pytest.approx(as_pair, abs=1e-4)  # a text is the response to an empty instruction
    windows = rolling_items([1, 2], list(range(10, 30)), 8, instruction_start=1)
    assert windows[0].ids == [1, 2, *range(10, 16)] and windows[0].target_start == 2
    targets = [t for w in windows for t in w.ids[w.target_start :]]
    assert targets == list(range(10, 30))  # every token scored once
    assert all(len(w.ids) <= 8 for w in windows)


def test_generate_until_is_iit_generate_cut_at_the_stop_strings(base_lm, tiny_model_dir):
    prompts = [ins for ins, _ in PAIRS]
    ours = base_lm.generate_until(_requests("generate_until", [(p, {"until": [], "max_gen_toks": 10}) for p in prompts]))
    direct = generate(str(tiny_model_dir), prompts, GenerateConfig(max_new_tokens=10), load=lambda: base_lm.loaded, show_progress=False)
    assert ours == [r.output for r in direct.results]
    cut = base_lm.generate_until(_requests("generate_until", [(prompts[0], {"until": [ours[0][3:5]], "max_gen_toks": 10})]))
    assert cut == [cut_at(ours[0], [ours[0][3:5]])] and len(cut[0]) <= 3
    with pytest.raises(ConfigError, match="greedily"):
        base_lm.generate_until(_requests("generate_until", [(prompts[0], {"do_sample": True, "temperature": 0.7})]))


def test_a_request_longer_than_max_length_keeps_its_last_tokens(tiny_llama_dir):
    """As lm-eval's models do: the context is cut first, then the continuation's head, whose tokens are not scored."""
    lm = ImplicitItLM(model=str(tiny_llama_dir), max_length=24)
    context, continuation = "A long instruction " * 6, "and a reply that is long enough to be cut as well " * 2
    with pytest.warns(UserWarning, match="cut to its last max_length=24"):
        item = lm.encode_pair(context, continuation)
    full = ImplicitItLM(model=str(tiny_llama_dir), max_length=4096).encode_pair(context, continuation)
    assert len(item.ids) == 24 and item.ids == full.ids[-24:]
    assert item.target_start == 1 and len(full.ids) - full.target_start > 23  # only the continuation's last 23 tokens count
    rules = ImplicitItLM(model=str(tiny_llama_dir), system="rules", max_length=24)
    with pytest.raises(ConfigError, match="with rules"):
        rules.encode_pair(context, continuation)


def test_system_names_and_unknown_arguments_are_refused_clearly():
    assert rule_config_of("base") is None
    assert rule_config_of("rules").rules == ["eos", "uniform", "diversity"]
    assert rule_config_of("rules:eos,uniform").rules == ["eos", "uniform"]
    with pytest.raises(ConfigError, match="choose base, rules"):
        rule_config_of("steered")
    with pytest.raises(ConfigError, match="unknown argument"):
        ImplicitItLM(model="gemma-3-270m", pretrained="gpt2")


def test_lm_evals_chat_template_is_refused_for_the_systems_own_format(base_lm):
    with pytest.raises(ConfigError, match="format=tulu"):
        base_lm.apply_chat_template([{"role": "user", "content": "Hi"}])


def test_iit_is_declared_as_an_lm_eval_model_and_registers():
    declared = {ep.name: ep.value for ep in entry_points(group="lm_eval.models")}
    assert declared.get("iit") == "implicit_it.evaluation.harness:ImplicitItLM"
    from lm_eval.api.registry import get_model

    assert register() is ImplicitItLM and get_model("iit") is ImplicitItLM


@pytest.fixture(scope="module")
def lm_eval_logs(tiny_llama_dir, shared_data, tmp_path_factory):
    """lm-eval's own evaluator on the offline IFEval task, for the base and the rule-adapter systems (10 prompts)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    logs = {}
    for system in ("base", "rules"):
        lm = ImplicitItLM(model=str(tiny_llama_dir), system=system)
        res = simple_evaluate(
            model=lm,
            tasks=["iit_ifeval"],
            task_manager=TaskManager(include_path=str(TASKS_DIR)),
            limit=10,
            log_samples=True,
            gen_kwargs="max_gen_toks=24",
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
        )
        path = tmp_path_factory.mktemp(system) / "samples_iit_ifeval.jsonl"
        path.write_text("".join(json.dumps(s, default=str) + "\n" for s in res["samples"]["iit_ifeval"]))
        logs[system] = (res["results"]["iit_ifeval"], path)
    return logs


def test_lm_eval_ifeval_equals_iit_eval_ifeval_on_the_same_generations(lm_eval_logs):
    from implicit_it.evaluation.ifeval import load_ifeval, score_ifeval

    prompts = {p.key: p for p in load_ifeval()}
    for metrics, path in lm_eval_logs.values():
        samples = [json.loads(line) for line in path.read_text().splitlines()]
        chosen = [prompts[s["doc"]["key"]] for s in samples]
        ours = score_ifeval(chosen, [s["resps"][0][0] for s in samples], n_boot=10)
        by_key = {row["key"]: row for row in ours.entries[0]["per_prompt"]}
        for s in samples:
            row = by_key[s["doc"]["key"]]
            assert s["inst_level_strict_acc"] == row["instruction_strict"]
            assert s["inst_level_loose_acc"] == row["instruction_loose"]
        summary = ours.entries[0]
        assert metrics["prompt_level_strict_acc,none"] == pytest.approx(summary["prompt_strict"]["accuracy"])
        assert metrics["inst_level_loose_acc,none"] == pytest.approx(summary["instruction_loose"]["accuracy"])


def test_paired_tests_read_two_lm_eval_sample_logs(lm_eval_logs):
    a, b = read_sample_log(lm_eval_logs["base"][1]), read_sample_log(lm_eval_logs["rules"][1])
    results = {r.metric: r for r in paired_tests(a, b)}
    assert set(results) == {"prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc", "inst_level_loose_acc"}
    strict = results["prompt_level_strict_acc"]
    assert strict.kind == "binary" and strict.n_docs == 10
    assert strict.value_a == pytest.approx(lm_eval_logs["base"][0]["prompt_level_strict_acc,none"])
    inst = results["inst_level_loose_acc"]
    assert inst.kind == "clustered" and inst.value_b == pytest.approx(lm_eval_logs["rules"][0]["inst_level_loose_acc,none"])
    assert 0 < inst.p_value <= 1 and inst.ci[0] <= inst.difference <= inst.ci[1]
    same = {r.metric: r for r in paired_tests(a, a)}
    assert all(r.difference == 0 and r.p_value == 1.0 for r in same.values())


def test_paired_tests_refuse_a_malformed_or_foreign_log(tmp_path, lm_eval_logs):
    bad = tmp_path / "samples.jsonl"
    bad.write_text('{"doc_id": 0, "acc": 1.0}\n{"doc_id": "x"}\n')
    with pytest.raises(DataFormatError, match=r"samples.jsonl:2: .*doc_id"):
        read_sample_log(bad)
    lines = lm_eval_logs["base"][1].read_text().splitlines()
    foreign = tmp_path / "other.jsonl"
    foreign.write_text("".join(json.dumps(json.loads(line) | {"doc_hash": "0" * 64}) + "\n" for line in lines))
    with pytest.raises(DataFormatError, match="another document"):
        paired_tests(read_sample_log(lm_eval_logs["base"][1]), read_sample_log(foreign))


def test_sign_flip_p_is_small_for_a_consistent_difference_and_one_for_none():
    assert sign_flip_p(np.ones(12)) < 0.001
    assert sign_flip_p(np.zeros(12)) == 1.0
    assert 0.2 < sign_flip_p(np.array([1.0, -1.0] * 6 + [1.0])) <= 1.0


def test_the_offline_tasks_scoring_equals_iit_eval_ifeval_on_gpt4s_541_responses(shared_data):
    """lm-eval's own IFEval scoring (through the task's utils.py) and implicit-it's, on GPT-4's published responses:
    the same instruction-level outcome for every instruction of every prompt, except where the official verifier draws
    its argument at random (a letter count asked for a non-letter, keys 1122 '#' and 1129 '!'): implicit-it seeds that
    draw with the prompt's key, lm-eval (like the official code) does not."""
    import importlib.util

    from implicit_it.evaluation.ifeval import load_ifeval, read_ifeval_responses, score_ifeval

    spec = importlib.util.spec_from_file_location("iit_ifeval_utils", TASKS_DIR / "iit_ifeval" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    docs = [json.loads(line) for line in (shared_data / "ifeval" / "input_data.jsonl").read_text().splitlines()]
    responses = read_ifeval_responses(shared_data / "ifeval" / "input_response_data_gpt4_20231107_145030.jsonl")
    ours = score_ifeval(load_ifeval(), responses, n_boot=10).entries[0]["per_prompt"]
    assert len(ours) == len(docs) == 541
    differ = [
        doc["key"]
        for doc, row in zip(docs, ours, strict=True)
        if (lm := utils.process_results(doc, [row["response"]]))["inst_level_strict_acc"] != row["instruction_strict"]
        or lm["inst_level_loose_acc"] != row["instruction_loose"]
    ]
    random_argument = {d["key"] for d in docs if any(not str(kw.get("letter", "a")).isalpha() for kw in d["kwargs"])}
    assert random_argument == {1122, 1129}
    assert set(differ) <= random_argument


def test_iit_lm_eval_and_iit_eval_paired_from_the_command_line(tiny_llama_dir, tmp_path, monkeypatch):
    """What the README shows: lm-eval's CLI through ``iit lm-eval`` (``--model iit`` registered, the offline task on the
    include path) for two systems with ``--log_samples``, then ``iit eval paired`` on the two sample files."""
    from typer.testing import CliRunner

    from implicit_it.app.cli import app

    monkeypatch.chdir(TASKS_DIR.parents[1])  # the task reads ../shared/data from the repository root
    runner = CliRunner()
    samples = {}
    for system in ("base", "rules"):
        out = tmp_path / system
        args = ["lm-eval", "--model", "iit", "--model_args", f"model={tiny_llama_dir},system={system}", "--tasks", "iit_ifeval",
                "--limit", "3", "--gen_kwargs", "max_gen_toks=8", "--output_path", str(out), "--log_samples"]  # fmt: skip
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        (samples[system],) = out.rglob("samples_iit_ifeval_*.jsonl")
        (results,) = out.rglob("results_*.json")
        assert json.loads(results.read_text())["results"]["iit_ifeval"]["prompt_level_loose_acc,none"] >= 0
    res = runner.invoke(app, ["eval", "paired", str(samples["base"]), str(samples["rules"]), "--out", str(tmp_path / "paired")])
    assert res.exit_code == 0, res.output
    written = json.loads((tmp_path / "paired" / "paired.json").read_text())
    assert {t["metric"] for t in written["tests"]} >= {"prompt_level_strict_acc", "inst_level_loose_acc"}
    assert all(t["n_docs"] == 3 for t in written["tests"]) and (tmp_path / "paired" / "manifest.json").is_file()
    res = runner.invoke(app, ["eval", "paired", str(samples["base"]), str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "missing.jsonl" in res.output


def test_the_raw_format_scores_and_decodes_the_context_as_plain_text(tiny_model_dir):
    """``format=raw``: no template. The log-likelihood of a continuation is the model's on ``BOS + context +
    continuation`` (computed here by hand), and decoding starts right after the context's own ids."""
    lm = ImplicitItLM(model=str(tiny_model_dir), format="raw")
    tok, model = lm.loaded.tokenizer, lm.loaded.model
    context, continuation = "The capital of France is", " Paris, of course."
    ids = tok(context + continuation)["input_ids"]
    n_context = len(tok(context)["input_ids"])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    expected = sum(logprobs[t - 1, ids[t]].item() for t in range(n_context, len(ids)))
    ((got, _),) = lm.loglikelihood(_requests("loglikelihood", [(context, continuation)]))
    assert got == pytest.approx(expected, abs=1e-4)
    (text,) = lm.generate_until(_requests("generate_until", [(context, {"max_gen_toks": 6})]))
    decoded = generate(
        str(tiny_model_dir), [context], GenerateConfig(max_new_tokens=6), fmt="raw", load=lambda: lm.loaded, show_progress=False
    )
    assert text == decoded.results[0].output
    assert get_format("raw").prompt_text(context) == context


def test_the_ranking_task_pairs_each_instruction_with_its_own_and_the_next_response(tiny_llama_dir, shared_data, monkeypatch):
    """``iit_lima_ranking`` through lm-eval's evaluator: two choices per instruction (its own response, then the next
    instruction's), each choice's logged log-likelihood the system's own, ``acc`` the fraction won by the own response."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(TASKS_DIR.parents[1])
    lm = ImplicitItLM(model=str(tiny_llama_dir), max_length=4096)  # whole LIMA responses (rotary positions extend)
    res = simple_evaluate(model=lm, tasks=["iit_lima_ranking"], task_manager=TaskManager(include_path=str(TASKS_DIR)), limit=4,
                          log_samples=True)  # fmt: skip
    samples = res["samples"]["iit_lima_ranking"]
    records = json.loads((shared_data / "lima" / "val_reference_gpt35.json").read_text())
    for i, s in enumerate(samples):
        assert s["doc"]["choices"] == [records[i]["output"].strip(), records[i + 1]["output"].strip()]
        expected = lm.loglikelihood(_requests("loglikelihood", [(s["doc"]["instruction"], c) for c in s["doc"]["choices"]]))
        assert [r[0][0] for r in s["resps"]] == pytest.approx([lp for lp, _ in expected])
    wins = [s["resps"][0][0][0] > s["resps"][1][0][0] for s in samples]
    assert res["results"]["iit_lima_ranking"]["acc,none"] == pytest.approx(sum(wins) / len(wins))


@pytest.mark.vllm
def test_generate_until_on_vllm_equals_hf_in_fp32(bytelevel_tokenizer, tmp_path):
    """``backend=vllm``: the same greedy tokens as the hf backend in fp32, rule adapter included (vLLM's CPU kernels
    need head_dim 32)."""
    pytest.importorskip("vllm")
    from implicit_it.engines import close_engine
    from tests.conftest import save_tiny_model

    model_dir = save_tiny_model("llama", bytelevel_tokenizer, tmp_path / "vllm-llama", head_dim=32)
    requests = _requests("generate_until", [(ins or "Say something.", {"max_gen_toks": 12}) for ins, _ in PAIRS])
    try:
        hf = ImplicitItLM(model=str(model_dir), system="rules").generate_until(requests)
        vl = ImplicitItLM(model=str(model_dir), system="rules", backend="vllm", vllm_dtype="float32").generate_until(requests)
    finally:
        close_engine()
    assert vl == hf and any(hf)
