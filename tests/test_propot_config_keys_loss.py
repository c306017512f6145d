"""``MODEL.PROPOT.AGGREGATION.*`` and ``MODEL.PROPOT.P2I.*`` reach the aggregation and L_p2i:
one case per key on the tiny demo model (see tests/test_propot_config_keys.py for the method:
each check passes with the key's value and fails without it)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F

from .test_propot_config_keys import P, Run, _close, assert_case


def _apa(pt, cands, tau=1.0, normalize=False, residual=True):
    """Eqs. (5)-(6) written out: w_k = softmax_k(pt . p_k / tau), p = pt + sum_k w_k p_k."""
    a, b = (F.normalize(pt, dim=-1), F.normalize(cands, dim=-1)) if normalize else (pt, cands)
    w = torch.softmax(torch.stack([(a * c).sum(-1) for c in b], dim=1) / tau, dim=1)  # [M, n]
    agg = sum(w[:, k : k + 1] * cands[k] for k in range(len(cands)))
    return pt + agg if residual else agg


def _check_aggregation(r: Run, want: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    for modality in (0, 1):
        pt, cands, out = r.aggregation(modality)
        assert cands.shape[0] == 3 and _close(out, want(pt, cands.detach()))


def check_aggregation_name(r: Run) -> None:
    _check_aggregation(r, lambda pt, c: pt + c.mean(0))  # Table 5 "mean"


def check_residual(r: Run) -> None:
    _check_aggregation(r, lambda pt, c: _apa(pt, c, residual=False))


def check_apa_tau(r: Run) -> None:
    _check_aggregation(r, lambda pt, c: _apa(pt, c, tau=0.3))


def check_apa_normalize(r: Run) -> None:
    _check_aggregation(r, lambda pt, c: _apa(pt, c, normalize=True))


def check_mlp_hidden_dim(r: Run) -> None:
    mlps = r.model.prototypes.aggregation.mlps
    assert [m[0].out_features for m in mlps] == [24, 24] and [m[2].in_features for m in mlps] == [
        24,
        24,
    ]


def _check_p2i(r: Run, **expected: Any) -> None:
    assert len(r.p2i_calls) == 2  # the image-side and the text-side term
    for call in r.p2i_calls:
        assert {k: call[k] for k in expected} == expected


def check_p2i_weight(r: Run) -> None:
    assert len(r.p2i_calls) == 2
    unweighted = sum(float(c["result"].detach()) for c in r.p2i_calls)
    assert float(r.losses["loss_p2i"].detach()) == pytest.approx(0.6 * unweighted, rel=1e-6)


LOSS_CASES: Dict[str, Tuple[Any, List[str], Callable[[Run], None]]] = {
    # key: (value, other keys it needs, check)
    "AGGREGATION.NAME": ("mean", [], check_aggregation_name),
    "AGGREGATION.RESIDUAL": (False, [], check_residual),
    "AGGREGATION.APA.TAU": (0.3, [], check_apa_tau),
    "AGGREGATION.APA.NORMALIZE": (True, [], check_apa_normalize),
    "AGGREGATION.MLP.HIDDEN_DIM": (24, [P + "AGGREGATION.NAME", "mlp"], check_mlp_hidden_dim),
    "P2I.WEIGHT": (0.6, [], check_p2i_weight),
    "P2I.TAU": (0.11, [], lambda r: _check_p2i(r, tau=0.11)),
    "P2I.LOG": (False, [], lambda r: _check_p2i(r, use_log=False)),
    "P2I.REDUCTION": ("sum", [], lambda r: _check_p2i(r, reduction="sum")),
}


@pytest.mark.parametrize("key", sorted(LOSS_CASES))
def test_loss_key_reaches_its_use(key):
    value, needs, check = LOSS_CASES[key]
    assert_case(value, needs, key, check)
