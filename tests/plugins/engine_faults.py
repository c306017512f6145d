"""Checkpoint and evaluation faults for the engine's reliability tests, loaded through ``PLUGINS``.

* ``ScriptedTextImageEvaluator``: the real text-image evaluator whose main ``metric`` after epoch
  ``e`` is ``FAULT_SCRIPTED_METRICS[e]`` (comma-separated), so which epoch is "best" is known in
  advance; it raises at the evaluation after epoch ``FAULT_EVAL_FAIL_EPOCH``.
* ``FAULT_KILL_SAVE="<name>:<n>"``: the ``n``-th ``torch.save`` into a file whose name contains
  ``<name>`` writes half of its bytes, then the process dies at once (``os._exit(137)``, as a
  SIGKILL would), between two bytes of the checkpoint.
"""

from __future__ import annotations

import io
import os
from typing import Dict

import torch
from fastreid.utils.events import get_event_storage

from fastreid_ext.evaluation.t2i_evaluator import TextImageEvaluator
from fastreid_ext.registry import EVALUATOR_REGISTRY


@EVALUATOR_REGISTRY.register()
class ScriptedTextImageEvaluator(TextImageEvaluator):
    def evaluate(self) -> Dict[str, float]:
        results = super().evaluate()
        epoch = get_event_storage().epoch
        if os.environ.get("FAULT_EVAL_FAIL_EPOCH") == str(epoch):
            raise RuntimeError(f"injected evaluation failure after epoch {epoch}")
        script = os.environ.get("FAULT_SCRIPTED_METRICS")
        if results and script:
            results["metric"] = float(script.split(",")[epoch])
        return results


def _install_killing_save() -> None:
    spec = os.environ.get("FAULT_KILL_SAVE")
    if not spec:
        return
    target, _, nth = spec.rpartition(":")
    original = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        name = getattr(f, "name", f if isinstance(f, str) else "")
        if isinstance(name, int):  # a file opened from a descriptor: find its path
            name = os.readlink(f"/proc/self/fd/{name}")
        if target in os.path.basename(str(name)):
            calls["n"] += 1
            if calls["n"] == int(nth):
                buf = io.BytesIO()
                original(obj, buf, *args, **kwargs)
                data = buf.getvalue()
                if isinstance(f, (str, os.PathLike)):
                    f = open(f, "wb")  # noqa: SIM115 - the process dies with it open
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                os._exit(137)
        return original(obj, f, *args, **kwargs)

    torch.save = save


_install_killing_save()
