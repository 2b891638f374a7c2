"""The core logit lens: layer parsing and vocabulary-wide reductions exact to float64."""

from __future__ import annotations

import pytest
import torch

from implicit_it.lens import log_softmax, logsumexp, parse_layers

GEMMA_VOCAB = 262_144


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3, 4]
    assert parse_layers("every:3", 7) == [0, 3, 6, 7]
    assert parse_layers("0,2-3", 4) == [0, 2, 3]
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("5", 4)
    with pytest.raises(ValueError, match="every:N"):
        parse_layers("every:x", 4)


@pytest.fixture(scope="module")
def trained_like_logits():
    """Logits over Gemma's vocabulary spread like a trained model's (std ~3, a few dominant tokens)."""
    gen = torch.Generator().manual_seed(0)
    z = 3.0 * torch.randn(8, GEMMA_VOCAB, generator=gen)
    z[:, :4] += 15.0
    return z


def test_log_softmax_normaliser_is_exact_where_torchs_float32_one_is_not(trained_like_logits):
    z = trained_like_logits
    ref = torch.log_softmax(z.double(), -1)
    assert (log_softmax(z).double() - ref).abs().max() <= 5e-6  # float32 rounding of log-probs down to -40 nats
    assert (logsumexp(z)[:, 0] - torch.logsumexp(z.double(), -1)).abs().max() <= 3e-7
    # the error a KL sees: Σ_w p(w)·error(w) per row (a row-constant shift passes straight through)
    p = ref.exp()
    ours = (p * (log_softmax(z).double() - ref)).sum(-1).abs().max()
    torchs = (p * (torch.log_softmax(z, -1).double() - ref)).sum(-1).abs().max()
    assert ours <= 3e-7 and torchs > 10 * ours


def test_log_softmax_fills_the_given_buffers_in_place(trained_like_logits):
    z = trained_like_logits[:3].clone()
    expected = log_softmax(z)
    probs = torch.empty_like(z)
    out = log_softmax(z, out=z, probs=probs)
    assert out.data_ptr() == z.data_ptr() and torch.equal(out, expected)
    assert torch.allclose(probs, expected.exp(), rtol=1e-5, atol=1e-12)
    assert torch.allclose(probs.sum(-1, dtype=torch.float64), torch.ones(3, dtype=torch.float64), atol=1e-6)
