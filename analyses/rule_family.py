"""How much of a logit delta is rule-shaped: streamed least squares on a (positions × vocab) panel.

The delta ``y[p, w] = log p_variant(w | x_p) − log p_base(w | x_p)`` is compared with two models,
both allowed a free constant per position (the log-softmax normaliser, which carries no
information about *which* tokens moved):

* the **hand-written rules**: ``y ≈ a_p + β · r(w, x_p)`` with ``r`` the paper's adapter scores
  (β = 1 is the adapter itself; β is also fitted, one number);
* the **rule family** — a static per-token bias, a seen-token term and an EOS slope:
  ``y ≈ a_p + c_w + d · seen(p, w) + s · n_p · [w = EOS]``, i.e. a free constant per scored token
  (the uniform rule generalised to every token), a penalty on tokens already used (the diversity
  rule) and an EOS score linear in the response length (the EOS rule), all fitted. With one free
  constant per token, its R² over the whole vocabulary (``vocab: all``, 262k constants for
  Gemma 3) mostly measures how static the delta is; the default scores the 2,048 most frequent
  tokens of the texts (plus the rule tokens and EOS), ``vocab: frequent:2048``. The output keeps
  the field name ``variance_explained_rule_family`` for this model.

Fits use one half of the positions and R² is scored on the other half. Every position sees the
same vocabulary, so the panel is balanced and the two-way fixed effects (a_p, c_w) are removed
exactly by double demeaning; the sufficient statistics are sums that stream chunk by chunk,
so memory is O(vocabulary), whatever the number of positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def row_centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=1, keepdim=True)


ROWDOT_BLOCK = 1024


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_w a[p, w] b[p, w] per row, accumulated in float64, without materialising the product.

    One float32 dot over a 262k-token vocabulary loses up to ~1e-4 of Σ|a b| (its partial sums
    grow large), which the difference of two ~10-nat sums then exposes. Here float32 dots run
    over blocks of 1,024 columns only and the block sums are added in float64: the error is
    ~5e-8 of Σ|a b| (one dot: ~2e-5) at the speed of the plain dot."""
    n, v = a.shape
    full = v - v % ROWDOT_BLOCK
    total = torch.zeros(n, dtype=torch.float64, device=a.device)
    if full:
        blocks = torch.einsum("ikj,ikj->ik", a[:, :full].unflatten(1, (-1, ROWDOT_BLOCK)), b[:, :full].unflatten(1, (-1, ROWDOT_BLOCK)))
        total += blocks.double().sum(1)
    if full < v:
        total += torch.einsum("ij,ij->i", a[:, full:], b[:, full:]).double()
    return total


@dataclass
class RuleFamilyFit:
    """Streaming fit (``add_fit``) then held-out scoring (``add_heldout``) of the rule family and
    of the scaled hand-written rules. ``eos`` is EOS's column in the (possibly sub-selected) vocab.

    Inputs per chunk of n positions: ``y`` (n, V) delta, ``seen`` (n, V) 0/1 float, ``n_generated``
    (n,) response tokens before each position, ``rules`` (n, V) adapter scores (optional). Rows may
    be shifted by any constant (the models' normalisers): every statistic is invariant to it, and
    rows are centred first so that float32 sums do not cancel."""

    vocab_size: int
    eos: int
    # fit half: sums over cells, over rows (products of row sums), and column sums
    n_rows: int = 0
    raw: dict[str, float] = field(default_factory=dict)
    rowprod: dict[str, float] = field(default_factory=dict)
    col_y: torch.Tensor | None = None
    col_s: torch.Tensor | None = None
    col_e_eos: float = 0.0
    rules_fit: dict[str, float] = field(default_factory=lambda: {"yy": 0.0, "yr": 0.0, "rr": 0.0})
    # results of the fit
    seen_coef: float = float("nan")
    eos_slope: float = float("nan")
    token_shift: torch.Tensor | None = None  # c_w (float64), centred to mean 0 over the vocabulary
    rules_scale: float = float("nan")
    # held-out half
    heldout: dict[str, float] = field(
        default_factory=lambda: {"ss_tot": 0.0, "ss_family": 0.0, "yy": 0.0, "yr": 0.0, "rr": 0.0, "n_rows": 0}
    )

    def _acc(self, table: dict[str, float], key: str, value: float) -> None:
        table[key] = table.get(key, 0.0) + value

    def _rules_terms(self, table: dict[str, float], y: torch.Tensor, rules: torch.Tensor | None) -> None:
        """Σ ỹ², Σ ỹ r̃, Σ r̃² with both row-centred (``y`` already is)."""
        if rules is None:
            return
        r_sum = rules.sum(1).double()
        table["yy"] += float(rowdot(y, y).sum())
        table["yr"] += float(rowdot(y, rules).sum())  # Σ ỹ (r − r̄) = Σ ỹ r, as Σ ỹ = 0
        table["rr"] += float((rowdot(rules, rules) - r_sum.square() / rules.shape[1]).sum())

    def add_fit(self, y: torch.Tensor, seen: torch.Tensor, n_generated: torch.Tensor, rules: torch.Tensor | None = None) -> None:
        y = row_centred(y.float())
        s, e = seen.float(), n_generated.double()
        ry, rs = y.sum(1).double(), s.sum(1).double()
        y_eos, s_eos = y[:, self.eos].double(), s[:, self.eos].double()
        for key, value in (
            ("yS", rowdot(y, s).sum()),
            ("yE", (y_eos * e).sum()),
            ("SS", rs.sum()),
            ("SE", (s_eos * e).sum()),
            ("EE", (e * e).sum()),
        ):
            self._acc(self.raw, key, float(value))
        for key, value in (("yS", ry @ rs), ("yE", ry @ e), ("SS", rs @ rs), ("SE", rs @ e), ("EE", e @ e)):
            self._acc(self.rowprod, key, float(value))
        self.col_y = y.sum(0).double() + (0 if self.col_y is None else self.col_y)
        self.col_s = s.sum(0).double() + (0 if self.col_s is None else self.col_s)
        self.col_e_eos += float(e.sum())
        self.n_rows += y.shape[0]
        self._rules_terms(self.rules_fit, y, None if rules is None else rules.float())

    def _demeaned(self, key: str, col_dot: float, tot_a: float, tot_b: float) -> float:
        p, v = self.n_rows, self.vocab_size
        return self.raw[key] - self.rowprod[key] / v - col_dot / p + tot_a * tot_b / (p * v)

    def solve(self) -> None:
        """Least squares for (seen coefficient, EOS slope) after double demeaning, then c_w."""
        if self.n_rows == 0 or self.col_y is None or self.col_s is None:
            raise ValueError("no fit-half positions were added")
        ty, ts, te = float(self.col_y.sum()), float(self.col_s.sum()), self.col_e_eos
        cy, cs = self.col_y, self.col_s
        ss = self._demeaned("SS", float(cs @ cs), ts, ts)
        se = self._demeaned("SE", float(cs[self.eos]) * te, ts, te)
        ee = self._demeaned("EE", te * te, te, te)
        ys = self._demeaned("yS", float(cy @ cs), ty, ts)
        ye = self._demeaned("yE", float(cy[self.eos]) * te, ty, te)
        gram = torch.tensor([[ss, se], [se, ee]], dtype=torch.float64)
        target = torch.tensor([ys, ye], dtype=torch.float64)
        coef = torch.linalg.pinv(gram, rtol=1e-10) @ target  # a constant feature (no variation) gets 0
        self.seen_coef, self.eos_slope = float(coef[0]), float(coef[1])
        shift = (cy - self.seen_coef * cs) / self.n_rows
        shift[self.eos] -= self.eos_slope * te / self.n_rows
        self.token_shift = shift - shift.mean()
        rr = self.rules_fit["rr"]
        self.rules_scale = self.rules_fit["yr"] / rr if rr > 0 else float("nan")

    def add_heldout(self, y: torch.Tensor, seen: torch.Tensor, n_generated: torch.Tensor, rules: torch.Tensor | None = None) -> None:
        if self.token_shift is None:
            self.solve()
        y = row_centred(y.float())
        s, e = seen.float(), n_generated.double()
        v, d, slope = self.vocab_size, self.seen_coef, self.eos_slope
        h = self.heldout
        h["ss_tot"] += float(rowdot(y, y).sum())
        # the residual after the family's prediction (a fresh tensor, updated in place), minus its row mean
        resid = y - self.token_shift.float()
        resid.sub_(s, alpha=d)
        resid[:, self.eos] -= (slope * e).float()
        h["ss_family"] += float((rowdot(resid, resid) - resid.sum(1).double().square() / v).sum())
        h["n_rows"] += y.shape[0]
        self._rules_terms(h, y, None if rules is None else rules.float())

    def scores(self) -> dict[str, float]:
        """Held-out R² of the family, and correlation / R² (fitted scale and β = 1) of the rules."""
        h = self.heldout
        nan = float("nan")
        cells = h["n_rows"] * self.vocab_size
        out = {
            "variance_explained_rule_family": 1 - h["ss_family"] / h["ss_tot"] if h["ss_tot"] > 0 else nan,
            # in nats² per (position, token) cell: comparable across layers, unlike R²
            "delta_variance": h["ss_tot"] / cells if cells else nan,
            "explained_variance_rule_family": (h["ss_tot"] - h["ss_family"]) / cells if cells else nan,
            "fitted_seen_coefficient": self.seen_coef,
            "fitted_eos_slope": self.eos_slope,
            "rules_scale": self.rules_scale,
            "n_fit_positions": self.n_rows,
            "n_heldout_positions": int(h["n_rows"]),
        }
        yy, yr, rr = h["yy"], h["yr"], h["rr"]
        if yy > 0 and rr > 0:
            beta = self.rules_scale if math.isfinite(self.rules_scale) else 0.0
            out["correlation_rules"] = yr / math.sqrt(yy * rr)
            out["variance_explained_rules"] = 1 - (yy - 2 * beta * yr + beta * beta * rr) / yy
            out["variance_explained_rules_unscaled"] = 1 - (yy - 2 * yr + rr) / yy
        else:
            out.update(correlation_rules=nan, variance_explained_rules=nan, variance_explained_rules_unscaled=nan)
        return out
