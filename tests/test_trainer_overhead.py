"""The trainer's per-iteration path adds no host synchronisation: losses stay on the device and
are copied to the host once per writer period, with values identical to a per-iteration copy.

A toy model (two loss terms) runs through ``benchmark.steps.TrainerLoop`` -- the trainer's
``StepRunner``, ``IterationTimer``, ``LRScheduleHook`` and periodic writers -- while a spy records
every ``Tensor.item`` / ``.cpu`` / ``.tolist`` / ``__float__`` / ``numpy`` call made from the
engine's code (fastreid_ext/engine, fast-reid's engine, the writers) and the iteration it came at.
"""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from fastreid_ext.benchmark.methods import BuiltMethod
from fastreid_ext.benchmark.steps import TrainerLoop
from fastreid_ext.engine.setup import build_cfg
from fastreid_ext.engine.step import writer_flush_schedule

from .conftest import REPO

ENGINE_DIRS = (
    str(REPO / "fastreid_ext" / "engine"),
    str(Path(torch.__file__).parents[1] / "fastreid" / "engine"),
    str(Path(torch.__file__).parents[1] / "fastreid" / "utils"),
)
HOST_COPIES = ("item", "cpu", "tolist", "__float__", "numpy")


class Toy(nn.Module):
    """``loss_a = mean((W x - y)^2)``, ``loss_b = 0.1 * |W|^2``; NaN from iteration ``nan_at``."""

    def __init__(self, nan_at: int = -1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 2)
        self.calls, self.nan_at = 0, nan_at

    @property
    def device(self) -> torch.device:
        return self.lin.weight.device

    def forward(self, batch):
        out = {
            "loss_a": ((self.lin(batch["x"]) - batch["y"]) ** 2).mean(),
            "loss_b": 0.1 * self.lin.weight.pow(2).sum(),
        }
        if self.calls == self.nan_at:
            out["loss_a"] = out["loss_a"] * float("nan")
        self.calls += 1
        return out


def _loop(tmp_path, flush_every_iteration: bool, nan_at: int = -1, period: int = 4):
    cfg = build_cfg(str(REPO / "configs" / "Baseline" / "demo.yml"), ["MODEL.DEVICE", "cpu"])
    model = Toy(nan_at)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    batches = [{"x": torch.randn(8, 4, generator=gen), "y": torch.randn(8, 2, generator=gen)}
               for _ in range(3)]  # fmt: skip
    built = BuiltMethod("toy", cfg, model, opt, (1, 1), 8, 2)
    loop = TrainerLoop(built, batches, None, str(tmp_path), log_period=period)
    loop._trainer.reset_data_iterator(itertools.cycle(batches))
    if flush_every_iteration:
        loop._trainer.flush_at = None
    return loop


def _spy(monkeypatch, loop, calls):
    for name in HOST_COPIES:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            caller = inspect.currentframe().f_back.f_code.co_filename
            if caller.startswith(ENGINE_DIRS):
                calls.append((loop.iter, _name, caller))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)


def test_host_copies_only_at_writer_flushes(tmp_path, monkeypatch):
    loop = _loop(tmp_path, flush_every_iteration=False)
    calls = []
    _spy(monkeypatch, loop, calls)
    loop.run(10, epoch=0)
    flush = writer_flush_schedule(loop, 4)
    # iterations 3 and 7 (writer period 4) and 9 (the last of the epoch and of the run)
    assert [i for i in range(10) if flush(i)] == [3, 7, 9]
    assert {it for it, _, _ in calls} == {3, 7, 9}, calls
    # one transfer of the pending losses per flush
    cpu = [it for it, name, _ in calls if name == "cpu"]
    assert cpu == [3, 7, 9]


def test_per_iteration_copy_is_what_the_spy_catches(tmp_path, monkeypatch):
    """The legacy path (copy at every iteration) is caught: the test above can fail."""
    loop = _loop(tmp_path, flush_every_iteration=True)
    calls = []
    _spy(monkeypatch, loop, calls)
    loop.run(6, epoch=0)
    assert {it for it, name, _ in calls if name == "cpu"} == set(range(6))


def test_logged_values_identical_to_per_iteration_copy(tmp_path):
    histories = []
    for every in (True, False):
        loop = _loop(tmp_path / str(every), flush_every_iteration=every)
        loop.run(10, epoch=0)
        h = loop.storage.histories()
        histories.append({k: h[k].values() for k in ("total_loss", "loss_a", "loss_b")})
        assert [it for _, it in histories[-1]["total_loss"]] == list(range(10))
    assert histories[0] == histories[1]
    # total_loss is the sum of the terms at every iteration
    for (t, _), (a, _), (b, _) in zip(
        *(histories[1][k] for k in ("total_loss", "loss_a", "loss_b"))
    ):
        assert t == a + b


def test_non_finite_loss_is_reported_with_its_iteration(tmp_path):
    loop = _loop(tmp_path, flush_every_iteration=False, nan_at=5)
    with pytest.raises(FloatingPointError, match="iteration=5"):
        loop.run(10, epoch=0)
    assert loop.iter == 7  # found at the flush after iteration 7, not later
