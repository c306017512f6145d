"""Tests for IRRA's text-image losses: SDM, identity and MLM (fastreid_ext.modeling.losses)."""

import math

import pytest
import torch

from fastreid_ext.modeling.losses import identity_loss, mlm_loss, sdm_loss


def _sdm_reference(v, t, pids, tau, eps):
    """SDM written with explicit loops (IRRA compute_sdm / Propot eqs. 7-9)."""
    b = len(pids)

    def cos(a, c):
        dot = sum(float(a[k]) * float(c[k]) for k in range(len(a)))
        na = math.sqrt(sum(float(x) ** 2 for x in a))
        nc = math.sqrt(sum(float(x) ** 2 for x in c))
        return dot / (na * nc)

    def direction(x, y):
        total = 0.0
        for i in range(b):
            s = [cos(x[i], y[j]) / tau for j in range(b)]
            z = sum(math.exp(sj) for sj in s)
            n_pos = sum(1 for j in range(b) if pids[i] == pids[j])
            for j in range(b):
                p = math.exp(s[j]) / z
                q = (1.0 if pids[i] == pids[j] else 0.0) / n_pos
                total += p * (math.log(p) - math.log(q + eps))
        return total / b

    return direction(v, t) + direction(t, v)


@pytest.mark.parametrize("tau", [0.02, 0.5])
@pytest.mark.parametrize("pids", [[0, 1, 2, 3, 4, 5], [3, 1, 3, 3, 7, 1]])
def test_sdm_matches_loop_formula(tau, pids):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = torch.randn(6, 5, generator=g, dtype=torch.float64)
    expected = _sdm_reference(v, t, pids, tau, 1e-8)
    got = sdm_loss(v.float() * 3.0, t.float(), torch.tensor(pids), tau=tau)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-4)


def test_sdm_hand_computed_two_pairs():
    # Orthonormal features, distinct ids, tau=1: s = I, p_ii = e/(e+1), q = I.
    v = torch.eye(2)
    e = math.e
    p_pos, p_neg = e / (e + 1), 1 / (e + 1)
    kl = p_pos * (math.log(p_pos) - math.log(1 + 1e-8)) + p_neg * (math.log(p_neg) - math.log(1e-8))
    got = sdm_loss(v, v.clone(), torch.tensor([0, 1]), tau=1.0)
    assert got.item() == pytest.approx(2 * kl, rel=1e-5)


def test_sdm_is_minimal_for_matching_distribution():
    # All pairs of one identity with identical features: p is uniform = q, loss ~ 0.
    v = torch.ones(4, 3)
    got = sdm_loss(v, v.clone(), torch.tensor([2, 2, 2, 2]))
    assert abs(got.item()) < 1e-6


def test_sdm_gradients_finite_and_half_input():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(8, 16, generator=g).half().requires_grad_()
    t = torch.randn(8, 16, generator=g).half().requires_grad_()
    pids = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])
    loss = sdm_loss(v, t, pids, tau=0.02)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(v.grad).all() and torch.isfinite(t.grad).all()
    assert v.grad.abs().sum() > 0 and t.grad.abs().sum() > 0


def test_sdm_bad_shapes():
    with pytest.raises(ValueError, match="sdm_loss"):
        sdm_loss(torch.randn(4, 3), torch.randn(4, 2), torch.arange(4))
    with pytest.raises(ValueError, match="pids"):
        sdm_loss(torch.randn(4, 3), torch.randn(4, 3), torch.arange(3))
    with pytest.raises(ValueError, match="tau"):
        sdm_loss(torch.randn(4, 3), torch.randn(4, 3), torch.arange(4), tau=0.0)


def _ce_reference(logits, targets):
    total = 0.0
    for row, y in zip(logits.tolist(), targets.tolist()):
        m = max(row)
        lse = m + math.log(sum(math.exp(x - m) for x in row))
        total += lse - row[y]
    return total / len(targets)


def test_identity_loss_matches_loop_formula():
    g = torch.Generator().manual_seed(2)
    img = torch.randn(5, 7, generator=g, requires_grad=True)
    txt = torch.randn(5, 7, generator=g, requires_grad=True)
    pids = torch.tensor([0, 6, 3, 3, 1])
    expected = (_ce_reference(img, pids) + _ce_reference(txt, pids)) / 2
    loss = identity_loss(img.half(), txt.half(), pids)
    assert loss.dtype == torch.float32
    half_expected = (
        _ce_reference(img.half().float(), pids) + _ce_reference(txt.half().float(), pids)
    ) / 2
    assert loss.item() == pytest.approx(half_expected, rel=1e-5)
    loss = identity_loss(img, txt, pids)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="identity_loss"):
        identity_loss(img, txt[:, :3], pids)


def test_mlm_loss_matches_loop_formula_and_ignores_unlabelled():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(3, 6, 11, generator=g, requires_grad=True)
    labels = torch.tensor([[0, 4, 0, 0, 10, 0], [0, 0, 0, 0, 0, 0], [0, 1, 2, 0, 0, 0]])
    rows, targets = [], []
    for b in range(3):
        for i in range(6):
            if labels[b, i] != 0:
                rows.append(scores[b, i].tolist())
                targets.append(int(labels[b, i]))
    expected = _ce_reference(torch.tensor(rows), torch.tensor(targets))
    loss = mlm_loss(scores, labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    grad_norm = scores.grad.abs().sum(-1)
    assert ((grad_norm > 0) == (labels != 0)).all()  # only labelled positions matter

    # Scores at unlabelled positions do not change the loss.
    perturbed = scores.detach().clone()
    perturbed[labels == 0] += 100 * torch.randn(int((labels == 0).sum()), 11, generator=g)
    assert mlm_loss(perturbed, labels).item() == pytest.approx(loss.item(), rel=1e-6)


def test_mlm_loss_custom_ignore_index():
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(2, 3, 5, generator=g)
    labels = torch.tensor([[-100, 0, 3], [4, -100, -100]])
    expected = _ce_reference(
        torch.stack([scores[0, 1], scores[0, 2], scores[1, 0]]), torch.tensor([0, 3, 4])
    )
    assert mlm_loss(scores, labels, ignore_index=-100).item() == pytest.approx(expected, rel=1e-5)


def test_mlm_loss_without_labels_is_zero_with_graph():
    scores = torch.randn(2, 4, 9, requires_grad=True)
    loss = mlm_loss(scores, torch.zeros(2, 4, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))
    with pytest.raises(ValueError, match="mlm_loss"):
        mlm_loss(scores, torch.zeros(2, 5, dtype=torch.long))
