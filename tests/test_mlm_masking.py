"""Tests for IRRA's MLM corruption of caption ids (fastreid_ext.text.mlm.mask_tokens)."""

import math

import pytest
import torch

from fastreid_ext.text.mlm import MLM_IGNORE_INDEX, mask_tokens
from fastreid_ext.text.tokenizer import EOT_ID, MASK_ID, SOT_ID


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _random_captions(n, length, seed, min_tokens=1, max_tokens=None):
    """[n, length] ids: SOT, a random number of eligible ids in [1, MASK_ID), EOT, zero padding."""
    g = _gen(seed)
    max_tokens = max_tokens or length - 2
    n_tok = torch.randint(min_tokens, max_tokens + 1, (n,), generator=g)
    pos = torch.arange(length).unsqueeze(0)
    ids = torch.randint(1, MASK_ID, (n, length), generator=g)
    ids = torch.where(pos <= n_tok.unsqueeze(1), ids, torch.zeros_like(ids))
    ids[:, 0] = SOT_ID
    ids[torch.arange(n), n_tok + 1] = EOT_ID
    return ids, n_tok


def _within(observed, expected, std, k=5.0):
    assert abs(observed - expected) <= k * std, (observed, expected, std)


def test_selection_rate_and_80_10_10_split():
    ids, n_tok = _random_captions(20000, 40, seed=0)
    p = 0.15
    masked, labels = mask_tokens(ids, _gen(1), prob=p)
    sel = labels != MLM_IGNORE_INDEX

    # Selected count: n p per sequence, plus the forced token when nothing was drawn ((1-p)^n).
    n = n_tok.double()
    expected = float((n * p + (1 - p) ** n).sum())
    std = math.sqrt(float((n * p * (1 - p)).sum()))
    _within(float(sel.sum()), expected, std)
    assert (sel.sum(1) >= 1).all()

    # 80/10/10 split, on sequences with >= 2 selections: those were never forced (a forced mask
    # is always MASK_ID), and the action draw is independent of the selection draw.
    natural = sel & (sel.sum(1, keepdim=True) >= 2)
    k = int(natural.sum())
    out = masked[natural]
    orig = ids[natural]
    frac_mask = float((out == MASK_ID).double().mean())
    frac_same = float((out == orig).double().mean())
    frac_rand = 1 - frac_mask - frac_same
    # An unchanged position is either "keep" (0.1) or a random draw equal to the original.
    p_same = 0.1 + 0.1 / (MASK_ID - 1)
    for frac, q in ((frac_mask, 0.8), (frac_same, p_same), (frac_rand, 0.1 - 0.1 / (MASK_ID - 1))):
        _within(frac, q, math.sqrt(q * (1 - q) / k))

    # Random replacements are ids in [1, 49404], uniformly spread.
    rand_ids = out[(out != MASK_ID) & (out != orig)]
    assert rand_ids.numel() > 1000
    assert int(rand_ids.min()) >= 1 and int(rand_ids.max()) <= MASK_ID - 1
    mean, sd = (1 + MASK_ID - 1) / 2, (MASK_ID - 1) / math.sqrt(12)
    _within(float(rand_ids.double().mean()), mean, sd / math.sqrt(rand_ids.numel()))


def test_labels_and_untouched_positions():
    ids, _ = _random_captions(3000, 24, seed=3)
    ids[::7, 3] = MASK_ID  # an already-masked token is not eligible either
    masked, labels = mask_tokens(ids, _gen(4), prob=0.3)
    sel = labels != 0
    eligible = (ids > 0) & (ids < MASK_ID)
    assert not (sel & ~eligible).any()  # SOT, EOT, padding, mask never selected
    assert torch.equal(labels[sel], ids[sel])
    assert torch.equal(masked[~sel], ids[~sel])
    assert masked.dtype == labels.dtype == torch.long
    assert (masked[:, 0] == SOT_ID).all() and ((masked == EOT_ID) == (ids == EOT_ID)).all()


def _loop_reference(ids, u_select, u_action, random_ids, prob):
    """IRRA's per-token loop applied to given uniforms (same draw order as mask_tokens)."""
    masked, labels = ids.clone(), torch.zeros_like(ids)
    for b in range(ids.shape[0]):
        for i in range(ids.shape[1]):
            t = int(ids[b, i])
            if 0 < t < MASK_ID and float(u_select[b, i]) < prob:
                labels[b, i] = t
                if float(u_action[b, i]) < 0.8:
                    masked[b, i] = MASK_ID
                elif float(u_action[b, i]) < 0.9:
                    masked[b, i] = random_ids[b, i]
        if not labels[b].any():
            elig = [i for i in range(ids.shape[1]) if 0 < int(ids[b, i]) < MASK_ID]
            if elig:
                i = 1 if 1 in elig else elig[0]
                labels[b, i] = ids[b, i]
                masked[b, i] = MASK_ID
    return masked, labels


def test_matches_per_token_loop():
    ids, _ = _random_captions(64, 12, seed=5, min_tokens=0)
    ids[0, 1] = MASK_ID  # position 1 not eligible: forced mask (if any) goes elsewhere
    g = _gen(6)
    u_select = torch.rand(ids.shape, generator=g)
    u_action = torch.rand(ids.shape, generator=g)
    random_ids = torch.randint(1, MASK_ID, ids.shape, generator=g)
    exp_masked, exp_labels = _loop_reference(ids, u_select, u_action, random_ids, 0.2)
    masked, labels = mask_tokens(ids, _gen(6), prob=0.2)
    assert torch.equal(masked, exp_masked) and torch.equal(labels, exp_labels)


def test_at_least_one_rule_positions():
    ids = torch.tensor(
        [
            [SOT_ID, 320, 2308, EOT_ID, 0],  # position 1 eligible -> forced there
            [SOT_ID, MASK_ID, 2308, EOT_ID, 0],  # position 1 not eligible -> first eligible (2)
            [700, 800, EOT_ID, 0, 0],  # no SOT: IRRA's position 1 is still eligible
            [700, MASK_ID, 900, EOT_ID, 0],  # first eligible is position 0
            [SOT_ID, EOT_ID, 0, 0, 0],  # empty caption: unchanged, no label (design choice)
        ]
    )
    masked, labels = mask_tokens(ids, _gen(0), prob=0.0)
    forced = [1, 2, 1, 0, None]
    for b, pos in enumerate(forced):
        exp_m, exp_l = ids[b].clone(), torch.zeros_like(ids[b])
        if pos is not None:
            exp_m[pos], exp_l[pos] = MASK_ID, ids[b, pos]
        assert masked[b].tolist() == exp_m.tolist(), b
        assert labels[b].tolist() == exp_l.tolist(), b


def test_single_token_captions_always_get_their_token_labelled():
    ids, _ = _random_captions(2000, 6, seed=7, min_tokens=1, max_tokens=1)
    masked, labels = mask_tokens(ids, _gen(8))
    assert torch.equal(labels[:, 1], ids[:, 1])
    assert (labels[:, [0, 2, 3, 4, 5]] == 0).all()


def test_prob_one_selects_every_eligible_token():
    ids, _ = _random_captions(200, 10, seed=9)
    _, labels = mask_tokens(ids, _gen(0), prob=1.0)
    assert torch.equal(labels != 0, (ids > 0) & (ids < MASK_ID))


def test_determinism_and_seed_dependence():
    ids, _ = _random_captions(500, 30, seed=10)
    a = mask_tokens(ids, _gen(123))
    b = mask_tokens(ids, _gen(123))
    c = mask_tokens(ids, _gen(124))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    # Consecutive calls on one generator draw new numbers.
    g = _gen(123)
    first, second = mask_tokens(ids, g), mask_tokens(ids, g)
    assert torch.equal(first[1], a[1]) and not torch.equal(second[1], a[1])


def test_one_dimensional_input_and_no_in_place_change():
    ids, _ = _random_captions(1, 20, seed=11)
    before = ids.clone()
    m1, l1 = mask_tokens(ids[0], _gen(5))
    m2, l2 = mask_tokens(ids, _gen(5))
    assert m1.shape == l1.shape == (20,)
    assert torch.equal(m1, m2[0]) and torch.equal(l1, l2[0])
    assert torch.equal(ids, before)


def test_bad_arguments():
    ids = torch.tensor([SOT_ID, 320, EOT_ID])
    with pytest.raises(TypeError, match="LongTensor"):
        mask_tokens(ids.int(), _gen(0))
    with pytest.raises(ValueError, match="shape"):
        mask_tokens(ids.view(1, 1, 3), _gen(0))
    with pytest.raises(ValueError, match="prob"):
        mask_tokens(ids, _gen(0), prob=1.5)
    with pytest.raises(TypeError, match="generator"):
        mask_tokens(ids, 0)
