"""The (lr, weight decay) of every parameter of the tiny CLIP baseline equals IRRA's recipe.

IRRA (anosorae/IRRA, solver/build.py) applies, per named parameter, in this order: "cross" in the
name -> lr * lr_factor; "bias" in the name -> lr * bias_lr_factor with weight_decay_bias;
"classifier" or "mlm_head" in the name -> lr * lr_factor. The expectations below are written out
by hand from those rules for IRRA's parameter of the same role (our ``backbone.model.*`` is IRRA's
``base_model.*``, our ``mlm_head.*`` holds IRRA's ``cross_attn``, ``cross_modal_transformer``,
``ln_pre_t``, ``ln_pre_i``, ``ln_post`` and ``mlm_head``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Tuple

import pytest
import torch
from fastreid.config import get_cfg
from fastreid.modeling.meta_arch import build_model
from torch import nn

from fastreid_ext.config import add_fastreid_ext_config
from fastreid_ext.solver import build_optimizer

# IRRA's defaults, which configs/Base-CLIP-T2I.yml sets: lr 1e-5, lr_factor 5, bias_lr_factor 2,
# weight_decay 4e-5, weight_decay_bias 0.
CLIP_WEIGHT = (1e-5, 4e-5)  # base_model.* without "bias"
CLIP_BIAS = (2e-5, 0.0)  # base_model.*bias*: lr * 2
CROSS_WEIGHT = (5e-5, 4e-5)  # cross_attn / cross_modal_transformer weights: lr * 5
CROSS_BIAS = (2e-5, 0.0)  # their biases: the bias rule replaces the lr * 5 of the cross rule
HEAD_WEIGHT = (5e-5, 4e-5)  # classifier.* / mlm_head.* weights: lr * 5
HEAD_BIAS = (5e-5, 0.0)  # their biases: the classifier rule replaces lr * 2, decay stays 0
NORM_WEIGHT = (1e-5, 4e-5)  # ln_pre_t / ln_pre_i / ln_post weights: no keyword, base lr
NORM_BIAS = (2e-5, 0.0)  # their biases: lr * 2

TINY_LAYERS = 2  # tiny-vit: two residual blocks in each CLIP encoder
MLM_DEPTH = 1


def _cfg():
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    cfg.merge_from_file("configs/Baseline/Base-Baseline.yml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CLIP.NAME = "tiny-vit"
    cfg.MODEL.CLIP.RANDOM_INIT = True
    cfg.MODEL.T2I.LOSSES = ["SDM", "ID", "MLM"]
    cfg.MODEL.T2I.MLM_HEADS = 2
    cfg.MODEL.T2I.MLM_DEPTH = MLM_DEPTH
    cfg.MODEL.HEADS.NUM_CLASSES = 5
    cfg.SOLVER.FUSED = False
    return cfg


def _block(prefix: str, weight: Tuple[float, float], bias: Tuple[float, float]) -> Dict:
    """One residual attention block of CLIP / open_clip, every parameter written out."""
    return {
        f"{prefix}.ln_1.weight": weight,
        f"{prefix}.ln_1.bias": bias,
        f"{prefix}.attn.in_proj_weight": weight,
        f"{prefix}.attn.in_proj_bias": bias,
        f"{prefix}.attn.out_proj.weight": weight,
        f"{prefix}.attn.out_proj.bias": bias,
        f"{prefix}.ln_2.weight": weight,
        f"{prefix}.ln_2.bias": bias,
        f"{prefix}.mlp.c_fc.weight": weight,
        f"{prefix}.mlp.c_fc.bias": bias,
        f"{prefix}.mlp.c_proj.weight": weight,
        f"{prefix}.mlp.c_proj.bias": bias,
    }


def _expected() -> Dict[str, Tuple[float, float]]:
    clip = "backbone.model"
    out: Dict[str, Tuple[float, float]] = {
        f"{clip}.positional_embedding": CLIP_WEIGHT,
        f"{clip}.text_projection": CLIP_WEIGHT,
        f"{clip}.token_embedding.weight": CLIP_WEIGHT,
        f"{clip}.ln_final.weight": CLIP_WEIGHT,
        f"{clip}.ln_final.bias": CLIP_BIAS,
        f"{clip}.visual.class_embedding": CLIP_WEIGHT,
        f"{clip}.visual.positional_embedding": CLIP_WEIGHT,
        f"{clip}.visual.proj": CLIP_WEIGHT,
        f"{clip}.visual.conv1.weight": CLIP_WEIGHT,
        f"{clip}.visual.ln_pre.weight": CLIP_WEIGHT,
        f"{clip}.visual.ln_pre.bias": CLIP_BIAS,
        f"{clip}.visual.ln_post.weight": CLIP_WEIGHT,
        f"{clip}.visual.ln_post.bias": CLIP_BIAS,
        "classifier.weight": HEAD_WEIGHT,
        "classifier.bias": HEAD_BIAS,
        "mlm_head.cross_attn.in_proj_weight": CROSS_WEIGHT,
        "mlm_head.cross_attn.in_proj_bias": CROSS_BIAS,
        "mlm_head.cross_attn.out_proj.weight": CROSS_WEIGHT,
        "mlm_head.cross_attn.out_proj.bias": CROSS_BIAS,
        "mlm_head.ln_pre_t.weight": NORM_WEIGHT,
        "mlm_head.ln_pre_t.bias": NORM_BIAS,
        "mlm_head.ln_pre_i.weight": NORM_WEIGHT,
        "mlm_head.ln_pre_i.bias": NORM_BIAS,
        "mlm_head.ln_post.weight": NORM_WEIGHT,
        "mlm_head.ln_post.bias": NORM_BIAS,
        "mlm_head.mlm_head.dense.weight": HEAD_WEIGHT,
        "mlm_head.mlm_head.dense.bias": HEAD_BIAS,
        "mlm_head.mlm_head.ln.weight": HEAD_WEIGHT,
        "mlm_head.mlm_head.ln.bias": HEAD_BIAS,
        "mlm_head.mlm_head.fc.weight": HEAD_WEIGHT,
        "mlm_head.mlm_head.fc.bias": HEAD_BIAS,
    }
    for i in range(TINY_LAYERS):
        out.update(_block(f"{clip}.visual.transformer.resblocks.{i}", CLIP_WEIGHT, CLIP_BIAS))
        out.update(_block(f"{clip}.transformer.resblocks.{i}", CLIP_WEIGHT, CLIP_BIAS))
    for i in range(MLM_DEPTH):
        out.update(
            _block(f"mlm_head.cross_modal_transformer.resblocks.{i}", CROSS_WEIGHT, CROSS_BIAS)
        )
    return out


def _assigned(optimizer: torch.optim.Optimizer, model: nn.Module) -> Dict:
    """name -> (lr, weight decay) of the optimizer group holding that parameter."""
    by_id = {
        id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]
    }
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}


def test_every_baseline_parameter_gets_irras_lr_and_weight_decay():
    s = _cfg().SOLVER  # IRRA's factors, from configs/Base-CLIP-T2I.yml
    assert (s.BASE_LR, s.NEW_MODULE_LR_FACTOR, s.BIAS_LR_FACTOR) == (1e-5, 5.0, 2.0)
    assert (s.WEIGHT_DECAY, s.WEIGHT_DECAY_BIAS, list(s.PRETRAINED_PREFIXES)) == (
        4e-5,
        0.0,
        ["backbone."],
    )
    torch.manual_seed(0)
    model = build_model(_cfg())
    assigned = _assigned(build_optimizer(_cfg(), model), model)
    expected = _expected()
    # CLIP's logit_scale is frozen by the backbone (the temperature is fixed); IRRA leaves it in
    # the base group but it never gets a gradient, so Adam never updates it either.
    assert not model.get_parameter("backbone.model.logit_scale").requires_grad
    assert "backbone.model.logit_scale" not in assigned
    assert sorted(assigned) == sorted(expected)
    wrong = {
        name: (assigned[name], want)
        for name, want in expected.items()
        if assigned[name] != pytest.approx(want, rel=1e-12, abs=0.0)
    }
    assert not wrong, "\n".join(f"{n}: got {g}, IRRA {w}" for n, (g, w) in wrong.items())


class _IrraNamed(nn.Module):
    """IRRA's top-level module names (its model keeps them directly on the model)."""

    def __init__(self) -> None:
        super().__init__()
        self.base_model = nn.Linear(4, 4)
        self.classifier = nn.Linear(4, 3)
        self.cross_attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.ln_pre_t = nn.LayerNorm(4)
        self.ln_post = nn.LayerNorm(4)
        self.mlm_head = nn.Sequential(OrderedDict(dense=nn.Linear(4, 4), fc=nn.Linear(4, 7)))


def test_irra_own_names_get_irra_groups():
    cfg = _cfg()
    cfg.SOLVER.PRETRAINED_PREFIXES = ["base_model."]
    model = _IrraNamed()
    assigned = _assigned(build_optimizer(cfg, model), model)
    assert assigned == {
        "base_model.weight": pytest.approx(CLIP_WEIGHT),
        "base_model.bias": pytest.approx(CLIP_BIAS),
        "classifier.weight": pytest.approx(HEAD_WEIGHT),
        "classifier.bias": pytest.approx(HEAD_BIAS),
        "cross_attn.in_proj_weight": pytest.approx(CROSS_WEIGHT),
        "cross_attn.in_proj_bias": pytest.approx(CROSS_BIAS),
        "cross_attn.out_proj.weight": pytest.approx(CROSS_WEIGHT),
        "cross_attn.out_proj.bias": pytest.approx(CROSS_BIAS),
        "ln_pre_t.weight": pytest.approx(NORM_WEIGHT),
        "ln_pre_t.bias": pytest.approx(NORM_BIAS),
        "ln_post.weight": pytest.approx(NORM_WEIGHT),
        "ln_post.bias": pytest.approx(NORM_BIAS),
        "mlm_head.dense.weight": pytest.approx(HEAD_WEIGHT),
        "mlm_head.dense.bias": pytest.approx(HEAD_BIAS),
        "mlm_head.fc.weight": pytest.approx(HEAD_WEIGHT),
        "mlm_head.fc.bias": pytest.approx(HEAD_BIAS),
    }


class _Debias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.debias = nn.Linear(2, 2)
        self.backbone.attn = nn.MultiheadAttention(2, 1)


def test_bias_is_any_parameter_named_bias_not_its_module():
    """``in_proj_bias`` is a bias; a module called ``debias`` keeps its weight in the weight
    group (names seen through DistributedDataParallel's ``module.``)."""
    model = nn.Module()
    model.module = _Debias()
    assigned = _assigned(build_optimizer(_cfg(), model), model)
    assert assigned == {
        "module.backbone.debias.weight": pytest.approx(CLIP_WEIGHT),
        "module.backbone.debias.bias": pytest.approx(CLIP_BIAS),
        "module.backbone.attn.in_proj_weight": pytest.approx(CLIP_WEIGHT),
        "module.backbone.attn.in_proj_bias": pytest.approx(CLIP_BIAS),
        "module.backbone.attn.out_proj.weight": pytest.approx(CLIP_WEIGHT),
        "module.backbone.attn.out_proj.bias": pytest.approx(CLIP_BIAS),
    }
