"""Trainer overhead on CPU: the trainer's per-iteration path (``steps.TrainerLoop``: StepRunner,
IterationTimer, LR schedule, periodic writers) against a plain PyTorch loop over the same tiny
model, data and optimizer, AMP off, per method. Target: >= 0.95x the plain loop's throughput."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

from .methods import METHODS, build_method, make_batches
from .steps import compare_loops

__all__ = ["trainer_overhead", "overhead_table"]


def trainer_overhead(
    methods: Sequence[str], steps: int, rounds: int, device: str = "cpu"
) -> List[Dict[str, Any]]:
    """One :func:`~.steps.compare_loops` row (fp32) per method, with the load average."""
    rows = []
    for name in methods:
        if name not in METHODS:
            raise KeyError(f"unknown method '{name}'; choose from {sorted(METHODS)}")
        built = build_method(name, device, tiny=True)
        row = compare_loops(built, make_batches(built, 2, device), "fp32", steps, rounds)
        row.update(method=name, load_average=list(os.getloadavg()))
        rows.append(row)
    return rows


def overhead_table(rows: List[Dict[str, Any]]) -> str:
    """Markdown table of :func:`trainer_overhead`'s rows."""
    lines = [
        "| method | steps per loop | trainer step (ms) | plain step (ms) | throughput ratio "
        "| load (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['steps_per_mode']} | {1000 * r['trainer_step_s']:.1f} "
            f"| {1000 * r['plain_step_s']:.1f} | {r['throughput_ratio']:.3f} "
            f"| {r['load_average'][0]:.1f} |"
        )
    return "\n".join(lines) + "\n"
