"""Training curves of a run (``OUTPUT_DIR/metrics.json``) as ``training_curves.png``.

``metrics.json`` (``fastreid_ext.engine.writers.MetricsJSONWriter``) holds one JSON object per line
and written iteration: ``{"iteration": it, key: value, ...}``. Loss terms (keys containing
``loss``: ``total_loss``, ``loss_sdm``, ...) are smoothed medians written every
``TRAINER.LOG_PERIOD`` iterations; an evaluation's metrics (``R1``, ``mAP``, ... or with a
``<dataset>/`` and/or ``<task>/`` prefix) are written at the last iteration of the evaluated
epoch, together with ``epoch`` (1-based) where the trainer records it. A resumed run appends to the
file: a key written again at an iteration keeps its last value.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from ..utils.atomic_io import atomic_write_bytes

__all__ = [
    "CURVES_FILE",
    "EVAL_METRICS",
    "TrainingCurves",
    "read_metrics",
    "extract_curves",
    "build_figure",
    "plot_training_curves",
    "write_training_curves",
]

#: File name written next to the run.
CURVES_FILE = "training_curves.png"
#: Evaluation metrics plotted (the last component of a key, after any ``prefix/``).
EVAL_METRICS = ("R1", "mAP")

Series = Tuple[List[float], List[float]]


@dataclass
class TrainingCurves:
    """Series ``name -> (x, y)``, each sorted by x.

    Attributes:
        losses: loss terms against the iteration.
        evals: R1 / mAP (in %, prefixes kept: ``"R1"``, ``"CUHKPEDES/mAP"``) against
            ``eval_x`` (``"epoch"`` when every evaluation record has one, else ``"iteration"``).
    """

    losses: Dict[str, Series] = field(default_factory=dict)
    evals: Dict[str, Series] = field(default_factory=dict)
    eval_x: str = "iteration"


def read_metrics(path: str) -> List[Dict[str, float]]:
    """The records of a ``metrics.json`` file (blank lines skipped).

    Raises:
        FileNotFoundError: no such file. ValueError: a line is not a JSON object with an integer
        ``iteration`` (the message names the file and line).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metrics file not found: {path}")
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from e
            if not isinstance(record, dict) or not isinstance(record.get("iteration"), int):
                raise ValueError(f"{path}:{n}: expected an object with an integer 'iteration'")
            records.append(record)
    return records


def _is_eval_key(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in EVAL_METRICS


def extract_curves(records: List[Dict[str, float]]) -> TrainingCurves:
    """Loss and R1/mAP series of ``metrics.json`` records (see the module doc)."""
    losses: Dict[str, Dict[int, float]] = {}
    evals: Dict[str, Dict[int, float]] = {}
    epochs: Dict[int, float] = {}
    for record in records:
        it = int(record["iteration"])
        has_eval = False
        for key, value in record.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if "loss" in key:
                losses.setdefault(key, {})[it] = float(value)
            elif _is_eval_key(key):
                evals.setdefault(key, {})[it] = float(value)
                has_eval = True
        if has_eval and isinstance(record.get("epoch"), (int, float)):
            epochs[it] = float(record["epoch"])
    eval_iters = {it for series in evals.values() for it in series}
    by_epoch = bool(eval_iters) and eval_iters <= set(epochs)

    def series(points: Dict[int, float], x_of_it) -> Series:
        pairs = sorted((x_of_it(it), v) for it, v in points.items())
        return [p[0] for p in pairs], [p[1] for p in pairs]

    return TrainingCurves(
        losses={k: series(v, float) for k, v in sorted(losses.items())},
        evals={
            k: series(v, (lambda it: epochs[it]) if by_epoch else float)
            for k, v in sorted(evals.items())
        },
        eval_x="epoch" if by_epoch else "iteration",
    )


def build_figure(curves: TrainingCurves, title: str = ""):
    """A matplotlib ``Figure`` (Agg canvas, no pyplot state) with two axes: one line per loss
    term against the iteration (left) and one per R1 / mAP series in % (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_eval = fig.subplots(1, 2)
    for name, (x, y) in curves.losses.items():
        ax_loss.plot(x, y, label=name, linewidth=2.0 if name == "total_loss" else 1.2)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss (smoothed median)")
    ax_loss.set_title("training losses")
    for name, (x, y) in curves.evals.items():
        ax_eval.plot(x, y, marker="o", label=name)
    ax_eval.set_xlabel(curves.eval_x)
    ax_eval.set_ylabel("%")
    ax_eval.set_title("evaluation (R@1, mAP)")
    for ax, empty in ((ax_loss, "no loss recorded"), (ax_eval, "no evaluation recorded")):
        if ax.lines:
            ax.legend(fontsize="small")
            ax.grid(True, alpha=0.3)
        else:
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_training_curves(curves: TrainingCurves, title: str = "") -> bytes:
    """PNG bytes (1200 x 450) of :func:`build_figure`."""
    buf = io.BytesIO()
    build_figure(curves, title).savefig(buf, format="png")
    return buf.getvalue()


def write_training_curves(run_dir: str, output: str = "") -> str:
    """Draw ``run_dir/metrics.json`` to ``output`` (default ``run_dir/training_curves.png``),
    atomically; returns the path written."""
    curves = extract_curves(read_metrics(os.path.join(run_dir, "metrics.json")))
    path = output or os.path.join(run_dir, CURVES_FILE)
    title = os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
    atomic_write_bytes(path, plot_training_curves(curves, title))
    return path
