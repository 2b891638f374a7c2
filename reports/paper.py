"""The paper's numbers, shown beside this run's for reference (never mixed with them).

Source: Hewitt, Liu, Manning, Liang, *Instruction Following without Instruction Tuning*,
arXiv:2409.14254v1 (21 Sep 2024). Win rates are AlpacaEval 2 length-controlled win rates against
the LIMA instruction-tuned model of the same base, mean ± std over 5 runs; ranking accuracies
are on the Alpaca training set. Llama-2-7B and OLMo-7B-Feb2024 only; the paper reports no rule
adapter results for OLMo and no ranking number for response-tuned models.
"""

from __future__ import annotations

SOURCE = "Hewitt et al. 2024, arXiv:2409.14254v1"
MODELS = ("Llama-2-7B", "OLMo-7B")

# Table 1 (response tuning) and Table 3 (single-task finetuning): win rate vs instruction-tuned, %
WIN_RATE_VS_INSTRUCTION: dict[str, dict[str, str]] = {
    "base": {"Llama-2-7B": "2.4 ± 0.14", "OLMo-7B": "4.7 ± 0.57"},
    "response": {"Llama-2-7B": "43.3 ± 1.1", "OLMo-7B": "43.7 ± 1.7"},
    "single_task-mbpp": {"Llama-2-7B": "16.9 ± 0.70", "OLMo-7B": "10.4 ± 1.0"},
    "single_task-gsm": {"Llama-2-7B": "23.7 ± 0.74", "OLMo-7B": "30.3 ± 0.6"},
    "single_task-poetry": {"Llama-2-7B": "22.9 ± 0.97", "OLMo-7B": "21.9 ± 0.48"},
    "single_task-recipes": {"Llama-2-7B": "14.6 ± 0.81", "OLMo-7B": "21.5 ± 0.86"},
    "single_task-chess": {"Llama-2-7B": "2.1 ± 0.36", "OLMo-7B": "6.3 ± 1.1"},
}

# Table 2: response ranking accuracy, %
RANKING: dict[str, dict[str, str]] = {
    "base": {"Llama-2-7B": "80.4", "OLMo-7B": "74.5"},
    "instruction": {"Llama-2-7B": "77.4", "OLMo-7B": "74.3"},
}

# Table 4: the rule-based adapter and its ablations (Llama-2-7B only), win rate vs instruction-tuned, %
RULES: dict[str, dict[str, str]] = {
    "base": {"Llama-2-7B": "2.4 ± 0.14"},
    "rules": {"Llama-2-7B": "24.4 ± 0.40"},
    "rules-no_eos": {"Llama-2-7B": "10.4 ± 0.30"},
    "rules-no_uniform": {"Llama-2-7B": "16.3 ± 0.25"},
    "rules-no_diversity": {"Llama-2-7B": "14.3 ± 0.58"},
}


def paper_cells(table: dict[str, dict[str, str]], label: str, models: tuple[str, ...] = MODELS) -> list[str]:
    """The paper's numbers for one row (``–`` where the paper has none)."""
    row = table.get(label, {})
    return [row.get(m, "–") for m in models]
