"""What the evaluation stage reads: IFEval, the judge-free suite, AlpacaEval's judge."""

from __future__ import annotations

from pydantic import Field, PositiveInt, field_validator

from implicit_it.config import IFEVAL_DATA, GenerateConfig, StrictConfig, check_path_text


class IfevalConfig(StrictConfig):
    """Which IFEval prompts are scored: the file and a stratified subset. One definition for the study's ``run.eval``
    block and ``iit eval ifeval`` (``--ifeval-data``, ``--ifeval-prompts``)."""

    ifeval_data: str = Field(default=IFEVAL_DATA, description="IFEval's input_data.jsonl, or hub:ifeval (google/IFEval)")
    ifeval_prompts: int | None = Field(
        default=None,
        gt=0,
        description="a subset stratified by each prompt's first instruction type, one fixed draw (the same in every run); None = all 541",
    )

    @field_validator("ifeval_data")
    @classmethod
    def _ifeval_source(cls, v: str) -> str:
        check_path_text(v)
        if v.startswith("hub:") and v != "hub:ifeval":
            raise ValueError(f"unknown hub source {v!r}: IFEval comes from a local input_data.jsonl or hub:ifeval")
        return v


class IfevalCommandConfig(GenerateConfig, IfevalConfig):
    """``iit eval ifeval --model``: its prompts, and how they are decoded."""


class JudgeConfig(StrictConfig):
    """Who judges AlpacaEval pairs, and the length-control data: one definition for the study's ``run.eval`` block and
    ``iit eval alpaca`` (``--judge``, ``--judge-model``, ``--lc-data``)."""

    judge: str | None = Field(
        default=None,
        description="gpt4_turbo (alpaca_eval's weighted GPT-4-turbo judge; OPENAI_API_KEY) | an OpenAI-compatible server URL "
        "(http://host:8000/v1) | local:SPEC (a model implicit-it loads) | metric:NAME (judge-free, scored against the "
        "instruction set's own answers); None: no judging (a study: no AlpacaEval steps; it then needs generate.instructions)",
    )
    judge_model: str | None = Field(default=None, description="the model name on the judge's server (default: its first)")
    lc_data: str | None = Field(
        default=None,
        description="folder with alpaca_eval's df_gamed.csv (and instruction_difficulty.csv) for the length-controlled win rate; "
        "None: the HF cache",
    )

    @field_validator("judge", "judge_model", "lc_data")
    @classmethod
    def _judge_text(cls, v: str | None) -> str | None:
        return check_path_text(v)


class RunEvalConfig(IfevalConfig, JudgeConfig):
    """Evaluation: IFEval (unless switched off) and the judge-free suite always; AlpacaEval when a judge is named."""

    ifeval: bool = Field(
        default=True,
        description=(
            "IFEval (Zhou et al. 2023), the standard judge-free benchmark and the report's headline: every system generates "
            "on its prompts (greedy, with run.generate's caps and batch size) and is scored strict and loose with 95% CIs, "
            "beside the reference systems constant / echo / empty (what the metric gives for free). false: no IFEval steps at"
            " all."
        ),
    )
    ifeval_prompts_by_system: dict[str, PositiveInt | None] = Field(
        default_factory=dict,
        description=(
            "per-system prompt counts keyed by system name (response.s0) or label (base, rules-no_eos; null = all 541), e.g. "
            "the whole benchmark (null) for the pair a study must decide and the stratified subset for the rest: every subset"
            " lies inside the whole, and paired tests compare the prompts two systems share (stratified draws of two sizes "
            "are not nested). The reference systems score the largest set."
        ),
    )
    reference: str = Field(
        default="instruction", description="the system every other is compared against (the paper: instruction-tuned), or a file"
    )

    @field_validator("reference")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return check_path_text(v)
