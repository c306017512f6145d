"""Parameter groups (pretrained encoders vs new modules, IRRA's bias rule) and the optimizer."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Dict, List, Tuple

import torch
from fastreid.config import CfgNode
from torch import nn

__all__ = [
    "build_param_groups",
    "build_optimizer",
    "is_bias_parameter",
    "parameter_role",
    "PARAMETER_ROLES",
]

logger = logging.getLogger(__name__)

#: Roles of trainable parameters, each with its own learning-rate rule (see
#: :func:`build_param_groups`): pretrained encoders, new modules, new classifier layers and
#: IRRA's cross-former LayerNorms.
PRETRAINED, NEW, CLASSIFIER, MLM_NORM = "pretrained", "new", "classifier", "mlm_norm"
PARAMETER_ROLES = (PRETRAINED, NEW, CLASSIFIER, MLM_NORM)
#: IRRA's "classifier" keywords (the ID classifier and the MLM vocabulary classifier): the
#: default of ``SOLVER.CLASSIFIER_KEYWORDS``.
IRRA_CLASSIFIER_KEYWORDS = ("classifier", "mlm_head")
#: IRRA's keyword of its new cross-modal modules (``cross_attn``, ``cross_modal_transformer``).
_CROSS_KEYWORD = "cross"
#: IRRA's cross-former LayerNorms: new modules whose names contain neither "cross" nor a
#: classifier keyword, so IRRA leaves them at the base learning rate.
_MLM_NORM_MODULES = frozenset({"ln_pre_t", "ln_pre_i", "ln_post"})


def _strip_ddp(name: str) -> str:
    return name[len("module.") :] if name.startswith("module.") else name


def is_bias_parameter(name: str) -> bool:
    """IRRA's bias test: the parameter's own name contains ``"bias"`` (``bias``,
    ``in_proj_bias`` of ``nn.MultiheadAttention``, ...).

    IRRA tests the whole dotted name; no module of IRRA's model has "bias" in its name, so testing
    the last component gives the same groups there and keeps a module named e.g. ``debias`` from
    turning its weights into biases.
    """
    return "bias" in name.rsplit(".", 1)[-1]


def parameter_role(
    name: str,
    prefixes: Tuple[str, ...],
    classifier_keywords: Tuple[str, ...] = IRRA_CLASSIFIER_KEYWORDS,
) -> str:
    """The role of parameter ``name`` (DDP ``module.`` already removed).

    ``prefixes`` (``SOLVER.PRETRAINED_PREFIXES``) mark pretrained weights. For the other (new)
    parameters the innermost name component with an IRRA keyword decides: one containing one of
    ``classifier_keywords`` (``SOLVER.CLASSIFIER_KEYWORDS``, IRRA's ``classifier`` and
    ``mlm_head`` by default) -> :data:`CLASSIFIER`; one containing ``cross``
    (``cross_attn``, ``cross_modal_transformer``) -> :data:`NEW`; one of ``ln_pre_t``,
    ``ln_pre_i``, ``ln_post`` -> :data:`MLM_NORM`; none (any other new module) -> :data:`NEW`.
    Innermost first because our ``CrossModalMLMHead`` (attribute ``mlm_head`` of the baseline)
    nests IRRA's ``cross_attn``, ``cross_modal_transformer``, ``ln_*`` and ``mlm_head`` modules,
    which are top-level attributes in IRRA; on IRRA's own names this equals its substring tests.
    """
    if name.startswith(prefixes):
        return PRETRAINED
    for part in reversed(name.split(".")):
        if any(k in part for k in classifier_keywords):
            return CLASSIFIER
        if _CROSS_KEYWORD in part:
            return NEW
        if part in _MLM_NORM_MODULES:
            return MLM_NORM
    return NEW


def _group_name(role: str, bias: bool) -> str:
    """One name per (LR rule, weight-decay rule) of the table in :func:`build_param_groups`."""
    if role == PRETRAINED:
        return "pretrained/bias" if bias else "pretrained/weight"
    if role == CLASSIFIER and bias:
        return "new/classifier_bias"  # new-module LR, bias decay
    if role == MLM_NORM and not bias:
        return "new/mlm_norm_weight"  # base LR, weight decay
    return "new/bias" if bias else "new/weight"


def _learning_rate(solver: CfgNode, role: str, bias: bool) -> float:
    """IRRA's three successive LR rules; a later rule replaces the LR of an earlier one."""
    if role == CLASSIFIER:  # IRRA's last rule: wins over the bias rule
        return solver.BASE_LR * solver.NEW_MODULE_LR_FACTOR
    if bias:  # replaces (does not multiply) the new-module factor
        return solver.BASE_LR * solver.BIAS_LR_FACTOR
    if role == NEW:
        return solver.BASE_LR * solver.NEW_MODULE_LR_FACTOR
    return solver.BASE_LR  # pretrained weights, IRRA's cross-former LayerNorm weights


def build_param_groups(cfg: CfgNode, model: nn.Module) -> List[Dict[str, Any]]:
    """Group trainable parameters by (learning rate, weight decay) as IRRA's recipe does.

    IRRA (``solver/build.py``, ``build_optimizer``) sets each parameter's LR and weight decay by
    three substring tests on its name, in this order, each later match replacing the LR set by an
    earlier one: ``"cross"`` (its new cross-modal modules) -> ``lr * lr_factor``; ``"bias"`` ->
    ``lr * bias_lr_factor`` and ``weight_decay_bias``; ``"classifier"`` or ``"mlm_head"`` ->
    ``lr * lr_factor``. Here ``SOLVER.PRETRAINED_PREFIXES`` stand for IRRA's CLIP (``base_model``)
    and every other parameter for a new module (IRRA's "cross"), with the roles of
    :func:`parameter_role` and the bias test of :func:`is_bias_parameter`:

    ==============  ==================================  ==================================
    role            weight LR                           bias LR
    ==============  ==================================  ==================================
    ``pretrained``  ``BASE_LR``                         ``BASE_LR * BIAS_LR_FACTOR``
    ``new``         ``BASE_LR * NEW_MODULE_LR_FACTOR``  ``BASE_LR * BIAS_LR_FACTOR``
    ``classifier``  ``BASE_LR * NEW_MODULE_LR_FACTOR``  ``BASE_LR * NEW_MODULE_LR_FACTOR``
    ``mlm_norm``    ``BASE_LR``                         ``BASE_LR * BIAS_LR_FACTOR``
    ==============  ==================================  ==================================

    Biases get ``WEIGHT_DECAY_BIAS`` in every role (the classifier rule changes only the LR),
    other parameters ``WEIGHT_DECAY``. So a new-module bias never gets both factors: the bias
    factor replaces the new-module factor, except in the classifiers, where the new-module factor
    replaces the bias factor. ``mlm_norm`` (IRRA's ``ln_pre_t``, ``ln_pre_i``, ``ln_post``, whose
    names match none of IRRA's keywords) keeps the base LR although it is randomly initialised.
    With the IRRA configs (``BASE_LR`` 1e-5, factors 5 and 2, decays 4e-5 and 0): CLIP weights
    1e-5 / 4e-5, every CLIP bias (``in_proj_bias`` included) 2e-5 / 0, cross-former weights
    5e-5 / 4e-5 and biases 2e-5 / 0, classifier weights 5e-5 / 4e-5 and biases 5e-5 / 0.

    One group per distinct rule, named ``pretrained/weight``, ``pretrained/bias``, ``new/weight``
    (``new`` and ``classifier`` weights), ``new/bias`` (``new`` and ``mlm_norm`` biases),
    ``new/classifier_bias`` and ``new/mlm_norm_weight``. Each carries ``group_name``, ``base_lr``
    (the LR before scheduling) and ``param_names`` (DDP ``module.`` removed). Frozen parameters
    (``requires_grad=False``, e.g. CLIP's unused ``logit_scale``) are left out.
    """
    solver = cfg.SOLVER
    prefixes = tuple(solver.PRETRAINED_PREFIXES)
    classifier_keywords = tuple(solver.CLASSIFIER_KEYWORDS)
    groups: OrderedDict[str, Dict[str, Any]] = OrderedDict()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        clean = _strip_ddp(name)
        role = parameter_role(clean, prefixes, classifier_keywords)
        bias = is_bias_parameter(clean)
        key = _group_name(role, bias)
        if key not in groups:
            lr = _learning_rate(solver, role, bias)
            groups[key] = {
                "params": [],
                "param_names": [],
                "lr": lr,
                "base_lr": lr,
                "weight_decay": solver.WEIGHT_DECAY_BIAS if bias else solver.WEIGHT_DECAY,
                "group_name": key,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(clean)
    if not groups:
        raise ValueError("The model has no trainable parameter (all have requires_grad=False)")
    return list(groups.values())


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPT`` in {Adam, AdamW, SGD} over :func:`build_param_groups` (never contiguous)."""
    groups = build_param_groups(cfg, model)
    solver = cfg.SOLVER
    name = solver.OPT
    if name in ("Adam", "AdamW"):
        opt_cls = getattr(torch.optim, name)
        kwargs = dict(lr=solver.BASE_LR, betas=tuple(solver.BETAS), eps=solver.EPS)
        optimizer = None
        if solver.FUSED:
            try:
                optimizer = opt_cls(groups, fused=True, **kwargs)
            except (RuntimeError, TypeError, ValueError) as err:  # e.g. a device without the kernel
                logger.info("SOLVER.FUSED: fused %s unavailable (%s); using the default", name, err)
        if optimizer is None:
            optimizer = opt_cls(groups, **kwargs)
    elif name == "SGD":
        optimizer = torch.optim.SGD(
            groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM, nesterov=solver.NESTEROV
        )
    else:
        raise KeyError(f"SOLVER.OPT must be one of Adam, AdamW, SGD; got '{name}'")
    for g in optimizer.param_groups:
        logger.info(
            "param group %-16s lr=%.3g wd=%.3g params=%d",
            g["group_name"],
            g["lr"],
            g["weight_decay"],
            len(g["params"]),
        )
    return optimizer
