"""A port of the rule scores in the paper's ``open_instruct/combined_model.py`` (InsTunerModel).

Ported from john-hewitt/implicit-ins at bc261e5 (unchanged through fe1c2d8), whose
``magic_string`` turns rules on one by one; ``first_token_penalty=True`` adds the start rule's
"first instruction token −6" that the file had from b23bf51 until d63f9f8 (removed at d46b1b3).

Kept as the paper wrote it: one sequence at a time, no cache, the whole prefix re-scanned at
every step, the *last* user / assistant tag occurrence found anew each time (so a chat turn the
model writes itself moves both), scores assigned into a float32 vector. What is parametrised is
only what the paper hard-codes for Llama-2: the tag ids (``tokenizer(f"\\n{TAG}\\n")[-5:]``), the
uniform rule's ids, the ids of "!" and "\\n", and the space marker ("▁") the
first-token score strips.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

AGREEMENTS = ["Okay"]


def score_string(s: str, marker: str = "▁") -> float:
    """The paper's first-token score of a vocabulary string (its space marker stripped)."""
    if s == marker:
        return 0
    if s[0] == marker:
        s = s[1:]
    if s == "I":
        return -3
    if s in AGREEMENTS:
        return 10
    if s[0].isupper():
        return 1
    elif s[0].islower() or ("\u4e00" <= s[0] <= "\u9fff"):
        return 1
    elif "\u0400" <= s[0] <= "\u04ff" or "\u3040" <= s[0] <= "\u30ff" or "\uac00" <= s[0] <= "\ud7af":
        return 1
    elif s[0] in ".,:;!?<>[]{}()\"'`~@#$%^&*-=+\\|/":
        return -1
    return 0


class PaperRules:
    def __init__(
        self,
        tokenizer,
        *,
        user_tag: Sequence[int],
        assistant_tag: Sequence[int],
        uniform: Mapping[int, float],
        bang_id: int,
        newline_id: int,
        eos_id: int,
        magic_string: str | None = None,
        first_token_penalty: bool = False,
        space_marker: str = "▁",
    ):
        self.vocab_size = len(tokenizer)
        self.user_tag, self.assistant_tag = list(user_tag), list(assistant_tag)
        self.uniform, self.bang_id, self.newline_id, self.eos_id = dict(uniform), bang_id, newline_id, eos_id
        self.first_token_penalty = first_token_penalty
        self.eos_range, self.scale, self.initial_weight = (0, 250), 5, 5
        inverse = {v: k for k, v in tokenizer.get_vocab().items()}
        self.initial_tok = torch.tensor([score_string(inverse[i], space_marker) for i in range(self.vocab_size)]).float()
        on = (lambda name: True) if magic_string is None else (lambda name: name in magic_string)
        self.do_eos, self.do_diversity, self.do_start, self.do_uniform = on("eos"), on("diversity"), on("start"), on("uniform")

    def scores(self, ids: Sequence[int]) -> torch.Tensor:
        """The rule logits for the token after ``ids`` (one unpadded sequence)."""
        output = torch.zeros(self.vocab_size)
        if self.do_uniform:
            for i, v in self.uniform.items():
                output[i] = v
        idlist = list(ids)
        ku, ka = len(self.user_tag), len(self.assistant_tag)
        first_token_index = None
        for i in range(len(idlist)):  # the last occurrence wins
            if idlist[i : i + ku] == self.user_tag:
                first_token_index = i + ku
        if self.do_diversity:
            uniq_words = set()
            for i in range(len(idlist)):
                if i < first_token_index:
                    continue
                uniq_words.add(idlist[i])
            for w in uniq_words:
                output[w] -= 1.5
        prompt_len = None
        for i in range(len(idlist)):
            if idlist[i : i + ka] == self.assistant_tag:
                prompt_len = i + ka
        prefix_len = len(idlist) - prompt_len
        x = torch.tensor(idlist)
        tag = torch.tensor(self.assistant_tag)
        if self.do_start:
            if len(x) >= ka and torch.all(x[-ka:] == tag):
                output += self.initial_tok * self.initial_weight
                if self.first_token_penalty:  # d63f9f8 only
                    output[idlist[first_token_index]] -= 6
            if len(x) >= ka + 1 and torch.all(x[-ka - 1 : -1] == tag):
                output[self.bang_id] += 15
            if len(x) >= ka + 2 and torch.all(x[-ka - 2 : -2] == tag):
                output[self.newline_id] += -10
        if self.do_eos:
            if self.eos_range[0] < prefix_len < self.eos_range[1]:
                score = max(0, self.scale * (prefix_len - self.eos_range[0]) / (self.eos_range[1] - self.eos_range[0]))
                vec = torch.zeros(self.vocab_size)
                vec[self.eos_id] = score * 3
                output += vec
            # (the paper's ``prefix_len > 1024`` branch builds a vector it never adds)
        return output

    def combined(self, base_logits: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
        """CombinedCausalLM's next-token scores: log_softmax(base) + log_softmax(rules)."""
        return base_logits.float().log_softmax(-1) + self.scores(ids).log_softmax(-1)
