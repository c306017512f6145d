"""Parameter groups (pretrained encoders vs new modules, bias factor) and the optimizer."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Dict, List

import torch
from fastreid.config import CfgNode
from torch import nn

__all__ = ["build_param_groups", "build_optimizer"]

logger = logging.getLogger(__name__)


def _is_bias(name: str, param: nn.Parameter) -> bool:
    return name.endswith(".bias") or name == "bias"


def build_param_groups(cfg: CfgNode, model: nn.Module) -> List[Dict[str, Any]]:
    """Group trainable parameters by (learning rate, weight decay).

    * names starting with one of ``SOLVER.PRETRAINED_PREFIXES`` (after removing a DDP ``module.``)
      are pretrained weights: ``BASE_LR``; every other parameter belongs to a new module:
      ``BASE_LR * NEW_MODULE_LR_FACTOR``;
    * biases get ``BIAS_LR_FACTOR`` on top and ``WEIGHT_DECAY_BIAS``; other parameters
      ``WEIGHT_DECAY``.

    Each group carries ``group_name``, ``base_lr`` (the LR before scheduling) and ``param_names``.
    Frozen parameters (``requires_grad=False``) are left out.
    """
    solver = cfg.SOLVER
    prefixes = tuple(solver.PRETRAINED_PREFIXES)
    groups: OrderedDict[tuple, Dict[str, Any]] = OrderedDict()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        clean = name[len("module.") :] if name.startswith("module.") else name
        pretrained = clean.startswith(prefixes)
        bias = _is_bias(clean, param)
        lr = solver.BASE_LR * (1.0 if pretrained else solver.NEW_MODULE_LR_FACTOR)
        if bias:
            lr *= solver.BIAS_LR_FACTOR
        wd = solver.WEIGHT_DECAY_BIAS if bias else solver.WEIGHT_DECAY
        key = ("pretrained" if pretrained else "new", "bias" if bias else "weight", lr, wd)
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names": [],
                "lr": lr,
                "base_lr": lr,
                "weight_decay": wd,
                "group_name": f"{key[0]}/{key[1]}",
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
