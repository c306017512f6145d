"""Event writers: console printer, ``metrics.json`` and TensorBoard that lose no scalar.

fast-reid's JSON and TensorBoard writers skip every scalar put at an iteration not newer than the
last one they wrote. Scalars put after an iteration was written -- the evaluation metrics at the end
of an epoch whose last iteration was logged (always the final evaluation), or statistics a hook
records before an epoch -- therefore never reached ``metrics.json`` or TensorBoard. The writers
here remember the last iteration written *per key*, so every ``put_scalar`` reaches both files
once, at the iteration it was put at.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections import defaultdict
from typing import Dict, Optional, Tuple

import torch
from fastreid.utils.events import EventWriter, JSONWriter, TensorboardXWriter, get_event_storage

__all__ = ["MetricsJSONWriter", "TensorboardWriter", "TrainerMetricPrinter"]

logger = logging.getLogger(__name__)


class _PerKeyNewScalars:
    """The storage's latest scalars that are newer than what was written for their key."""

    def __init__(self, window_size: int) -> None:
        self._window = window_size
        self._written: Dict[str, int] = {}

    def take(self) -> Dict[int, Dict[str, float]]:
        """``{iteration: {key: value}}`` of unwritten scalars; marks them written."""
        storage = get_event_storage()
        out: Dict[int, Dict[str, float]] = defaultdict(dict)
        for k, (v, it) in storage.latest_with_smoothing_hint(self._window).items():
            if it > self._written.get(k, -1):
                out[int(it)][k] = float(v)
                self._written[k] = int(it)
        return dict(out)


class MetricsJSONWriter(JSONWriter):
    """``metrics.json`` (one JSON object per line and iteration) without lost scalars."""

    def __init__(self, json_file: str, window_size: int = 20) -> None:
        super().__init__(json_file, window_size)
        self._new = _PerKeyNewScalars(window_size)

    def write(self) -> None:
        for it, scalars in sorted(self._new.take().items()):
            scalars["iteration"] = it
            self._file_handle.write(json.dumps(scalars, sort_keys=True) + "\n")
        self._file_handle.flush()
        os.fsync(self._file_handle.fileno())


class TensorboardWriter(TensorboardXWriter):
    """TensorBoard event file without lost scalars (images/histograms as fast-reid's)."""

    def __init__(self, log_dir: str, window_size: int = 20, **kwargs) -> None:
        super().__init__(log_dir, window_size, **kwargs)
        self._new = _PerKeyNewScalars(window_size)

    def write(self) -> None:
        storage = get_event_storage()
        for it, scalars in sorted(self._new.take().items()):
            for k, v in scalars.items():
                self._writer.add_scalar(k, v, it)
        for img_name, img, step in storage._vis_data:
            self._writer.add_image(img_name, img, step)
        storage.clear_images()
        for params in storage._histograms:
            self._writer.add_histogram_raw(**params)
        storage.clear_histograms()
        self._writer.flush()


class TrainerMetricPrinter(EventWriter):
    """The console line of fast-reid's ``CommonMetricPrinter``, made robust for our trainer:

    * the ETA follows ``trainer.max_iter``, which changes when a hook swaps the training set
      (CPCL's pseudo labels, CSDN's phases);
    * only losses written within the last ``window`` iterations are printed: a loss that is no
      longer computed (an earlier phase's) is not repeated with a stale value;
    * no division by zero when the iteration time is not known yet (runs of 1-2 iterations, or
      two writes at the same iteration).
    """

    def __init__(self, trainer, window: int = 20) -> None:
        self._trainer = trainer
        self._window = int(window)
        self._last_write: Optional[Tuple[int, float]] = None

    @property
    def max_iter(self) -> int:
        """The trainer's current ``max_iter`` (it changes when a hook swaps the training set)."""
        return int(self._trainer.max_iter)

    def _eta_seconds(self, storage, iteration: int) -> Optional[float]:
        remaining = self.max_iter - iteration - 1
        try:
            return storage.history("time").median(1000) * remaining
        except KeyError:
            pass
        now = time.perf_counter()
        eta = None
        if self._last_write is not None and iteration > self._last_write[0]:
            per_iter = (now - self._last_write[1]) / (iteration - self._last_write[0])
            eta = per_iter * remaining
        self._last_write = (iteration, now)
        return eta

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if iteration >= self.max_iter:
            return
        latest = storage.latest()
        recent = {
            k: h
            for k, h in storage.histories().items()
            if "loss" in k and k in latest and latest[k][1] > iteration - self._window
        }
        losses = "  ".join(f"{k}: {h.median(self._window):.4g}" for k, h in recent.items())
        parts = []
        eta = self._eta_seconds(storage, iteration)
        if eta is not None:
            parts.append(f"eta: {datetime.timedelta(seconds=int(eta))}")
        parts.append(f"epoch/iter: {storage.epoch}/{iteration}")
        if losses:
            parts.append(losses)
        for key, label in (("time", "time"), ("data_time", "data_time")):
            try:
                parts.append(f"{label}: {storage.history(key).avg(self._window):.4f}")
            except KeyError:
                pass
        try:
            parts.append(f"lr: {storage.history('lr').latest():.2e}")
        except KeyError:
            pass
        if torch.cuda.is_available():
            parts.append(f"max_mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M")
        logger.info(" %s", "  ".join(parts))
