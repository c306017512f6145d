"""Registries that fast-reid lacks (trainers, hooks, evaluators) and a name lookup with clear errors."""

from __future__ import annotations

from typing import Any

from fastreid.utils.registry import Registry

__all__ = ["ExtRegistry", "TRAINER_REGISTRY", "HOOK_REGISTRY", "EVALUATOR_REGISTRY", "lookup"]


class ExtRegistry(Registry):
    """fast-reid's :class:`Registry` whose ``get`` error names the available entries."""

    def get(self, name: str) -> Any:
        return lookup(self, name)

    def names(self) -> list[str]:
        return sorted(self._obj_map)


def lookup(registry: Registry, name: str, key: str = "") -> Any:
    """``registry.get(name)`` with an error that names the config ``key`` and the known names."""
    obj = registry._obj_map.get(name)
    if obj is None:
        where = f" (config key {key})" if key else ""
        known = ", ".join(sorted(registry._obj_map)) or "<none>"
        raise KeyError(
            f"No object named '{name}' in the {registry._name} registry{where}. Known names: {known}. "
            "Out-of-tree methods must be imported first: list their module in PLUGINS or install a "
            "package exposing the 'fastreid_ext.plugins' entry-point group."
        )
    return obj


TRAINER_REGISTRY = ExtRegistry("TRAINER")
TRAINER_REGISTRY.__doc__ = (
    "Trainer classes, selected by ``cfg.TRAINER.NAME``; built as ``cls(cfg)``."
)

HOOK_REGISTRY = ExtRegistry("HOOK")
HOOK_REGISTRY.__doc__ = (
    "Training hooks, selected by ``cfg.TRAINER.HOOKS``; built as ``cls(cfg, trainer)`` and appended "
    "after the trainer's default hooks (before evaluation/checkpointing/writing)."
)

EVALUATOR_REGISTRY = ExtRegistry("EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = (
    "Evaluator classes, selected by ``cfg.TEST.EVALUATOR``; each has a classmethod "
    "``build(cfg, dataset_name, output_dir) -> (data_loader, evaluator)`` (fast-reid's "
    "``build_evaluator`` contract) and implements ``reset/process/evaluate``."
)
