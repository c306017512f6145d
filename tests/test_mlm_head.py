"""Tests for IRRA's cross-modal MLM head (fastreid_ext.modeling.heads.CrossModalMLMHead)."""

import math

import pytest
import torch

from fastreid_ext.modeling.heads import CrossModalMLMHead
from fastreid_ext.modeling.losses import mlm_loss
from fastreid_ext.text.tokenizer import VOCAB_SIZE

D, HEADS, DEPTH, VOCAB = 64, 2, 2, 50


@pytest.fixture
def head():
    torch.manual_seed(0)
    return CrossModalMLMHead(D, num_heads=HEADS, depth=DEPTH, vocab_size=VOCAB)


def _inputs(b=3, length=7, n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, length, D, generator=g), torch.randn(b, n, D, generator=g)


def test_output_shape_default_vocab():
    head = CrossModalMLMHead(D, num_heads=HEADS, depth=1)
    text, image = _inputs()
    assert head(text, image).shape == (3, 7, VOCAB_SIZE)


def test_gradient_reaches_every_parameter(head):
    text, image = _inputs()
    text.requires_grad_()
    image.requires_grad_()
    labels = torch.zeros(3, 7, dtype=torch.long)
    labels[0, 1], labels[1, 4], labels[2, 2] = 5, 17, 49
    loss = mlm_loss(head(text, image), labels)
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert text.grad.abs().sum() > 0 and image.grad.abs().sum() > 0


def test_only_labelled_positions_drive_the_loss(head):
    text, image = _inputs()
    scores = head(text, image)
    scores.retain_grad()
    labels = torch.zeros(3, 7, dtype=torch.long)
    labels[1, 3] = 8
    mlm_loss(scores, labels).backward()
    touched = scores.grad.abs().sum(-1) > 0
    assert touched.sum() == 1 and touched[1, 3]
    # Moving the label moves the loss.
    other = torch.zeros_like(labels)
    other[1, 3] = 9
    assert mlm_loss(scores, other).item() != pytest.approx(mlm_loss(scores, labels).item())


def test_samples_are_independent_and_image_conditioned(head):
    head.eval()
    text, image = _inputs()
    base = head(text, image)
    image2 = image.clone()
    image2[1] += torch.randn_like(image2[1])
    out = head(text, image2)
    assert torch.allclose(out[0], base[0], atol=1e-6) and torch.allclose(out[2], base[2], atol=1e-6)
    assert not torch.allclose(out[1], base[1], atol=1e-4)
    # Each text position sees the other positions (self-attention in the transformer).
    text2 = text.clone()
    text2[0, 6] += torch.randn(D)  # (a constant shift would be removed by ln_pre_t)
    assert not torch.allclose(head(text2, image)[0, 0], base[0, 0], atol=1e-6)
    # Number of image tokens is free.
    assert head(text, image[:, :2]).shape == (3, 7, VOCAB)


def test_irra_initialisation():
    torch.manual_seed(0)
    head = CrossModalMLMHead(D, num_heads=HEADS, depth=DEPTH, vocab_size=400)
    attn_std = D**-0.5
    proj_std = attn_std * (2 * DEPTH) ** -0.5
    fc_std = (2 * D) ** -0.5
    expected = {
        "cross_attn.in_proj_weight": attn_std,
        "cross_attn.out_proj.weight": proj_std,
        "mlm_head.dense.weight": fc_std,
        "mlm_head.fc.weight": proj_std,
    }
    for i in range(DEPTH):
        pre = f"cross_modal_transformer.resblocks.{i}."
        expected[pre + "attn.in_proj_weight"] = attn_std
        expected[pre + "attn.out_proj.weight"] = proj_std
        expected[pre + "mlp.c_fc.weight"] = fc_std
        expected[pre + "mlp.c_proj.weight"] = proj_std
    params = {k: v.detach() for k, v in head.named_parameters()}
    for name, std in expected.items():
        w = params[name]
        se = std / math.sqrt(2 * (w.numel() - 1))  # standard error of a sample std
        assert abs(float(w.std()) - std) < 6 * se, (name, float(w.std()), std)
        assert abs(float(w.mean())) < 6 * std / math.sqrt(w.numel()), name


def test_irra_state_dict_names(head):
    keys = set(head.state_dict())
    for key in (
        "cross_attn.in_proj_weight",
        "ln_pre_t.weight",
        "ln_pre_i.bias",
        "ln_post.weight",
        "cross_modal_transformer.resblocks.1.ln_2.weight",
        "mlm_head.dense.weight",
        "mlm_head.ln.weight",
        "mlm_head.fc.bias",
    ):
        assert key in keys, key


def test_bad_arguments(head):
    with pytest.raises(ValueError, match="num_heads"):
        CrossModalMLMHead(64, num_heads=3)
    with pytest.raises(ValueError, match="depth"):
        CrossModalMLMHead(64, num_heads=2, depth=0)
    text, image = _inputs()
    with pytest.raises(ValueError, match="CrossModalMLMHead"):
        head(text, image[:2])
    with pytest.raises(ValueError, match="CrossModalMLMHead"):
        head(text[..., :32], image)
