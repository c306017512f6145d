"""Unit tests of the engine's reliability pieces: atomic writes, the checkpointer, the writers
and the console printer."""

from __future__ import annotations

import io
import json
import os
from types import SimpleNamespace

import pytest
import torch
from fastreid.utils.events import EventStorage
from torch import nn

from fastreid_ext.engine.checkpoint import ExtCheckpointer
from fastreid_ext.engine.writers import MetricsJSONWriter, TrainerMetricPrinter
from fastreid_ext.utils.atomic_io import (
    atomic_json_dump,
    atomic_torch_save,
    is_temporary,
    remove_stale_temporaries,
)


class _Boom(RuntimeError):
    pass


_TORCH_SAVE = torch.save


def _half_then_raise(obj, f):
    """A serialiser that dies between two bytes of its output."""
    buf = io.BytesIO()
    _TORCH_SAVE(obj, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    raise _Boom("killed mid-write")


def test_atomic_save_keeps_the_previous_file_on_a_failed_write(tmp_path):
    path = str(tmp_path / "state.pt")
    atomic_torch_save({"x": torch.arange(5)}, path)
    with pytest.raises(_Boom):
        atomic_torch_save({"x": torch.zeros(100_000)}, path, save=_half_then_raise)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(5))
    assert os.listdir(tmp_path) == ["state.pt"]  # the temporary file was removed


def test_atomic_json_dump_leaves_nothing_on_a_bad_value(tmp_path):
    path = tmp_path / "r.json"
    atomic_json_dump({"a": 1}, str(path))
    with pytest.raises(TypeError):
        atomic_json_dump({"a": object()}, str(path), default=None)
    assert json.loads(path.read_text()) == {"a": 1}


def test_stale_temporaries_are_recognised_and_removed(tmp_path):
    (tmp_path / ".model_best.pth.tmp-123-abc").write_bytes(b"partial")
    (tmp_path / "model_best.pth").write_bytes(b"x")
    (tmp_path / "notes.tmp").write_bytes(b"x")  # not ours
    assert is_temporary(".model_best.pth.tmp-123-abc") and not is_temporary("notes.tmp")
    removed = remove_stale_temporaries(str(tmp_path))
    assert [os.path.basename(p) for p in removed] == [".model_best.pth.tmp-123-abc"]
    assert sorted(os.listdir(tmp_path)) == ["model_best.pth", "notes.tmp"]


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_checkpointer_survives_a_kill_while_overwriting_the_tagged_checkpoint(
    tmp_path, monkeypatch
):
    """The tagged model_best.pth is overwritten and the write dies half-way: the old file and
    the pointer stay valid (fast-reid's in-place write left a truncated file behind it)."""
    good = _model(0)
    ckpt = ExtCheckpointer(good, str(tmp_path))
    ckpt.save("model_best", epoch=0)
    monkeypatch.setattr(torch, "save", _half_then_raise)
    with pytest.raises(_Boom):
        ExtCheckpointer(_model(1), str(tmp_path)).save("model_best", epoch=1)
    monkeypatch.undo()
    fresh = _model(2)
    loader = ExtCheckpointer(fresh, str(tmp_path))
    assert loader.get_checkpoint_file().endswith("model_best.pth")
    extra = loader.resume_or_load("", resume=True)
    assert extra["epoch"] == 0
    for a, b in zip(good.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_plain_state_dict_initialises_training(tmp_path):
    src = _model(0)
    path = tmp_path / "plain.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)
    dst = _model(1)
    ExtCheckpointer(dst, str(tmp_path / "out")).resume_or_load(str(path), resume=False)
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_without_model_entry_names_the_file(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"state": {"w": torch.ones(1)}, "epoch": 3}, path)
    with pytest.raises(KeyError, match=r"odd\.pth.*no 'model' entry"):
        ExtCheckpointer(_model(0), str(tmp_path)).resume_or_load(str(path), resume=False)


def test_missing_tagged_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "last_checkpoint").write_text("model_0009.pth")
    with pytest.raises(FileNotFoundError, match="model_0009.pth"):
        ExtCheckpointer(_model(0), str(tmp_path)).get_checkpoint_file()


def test_json_writer_writes_scalars_put_at_an_already_written_iteration(tmp_path):
    """The evaluation's metrics arrive after the epoch's last iteration was logged."""
    path = tmp_path / "metrics.json"
    writer = MetricsJSONWriter(str(path))
    with EventStorage(0) as storage:
        for it in range(3):
            storage.iter = it
            storage.put_scalar("loss_sdm", 1.0 / (it + 1))
        writer.write()
        storage.put_scalars(R1=42.0, metric=42.0, smoothing_hint=False)  # still iteration 2
        writer.write()
        writer.write()  # nothing new: nothing written twice
    writer.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["iteration"] == 2 and "loss_sdm" in rows[0] and "R1" not in rows[0]
    assert rows[1] == {"iteration": 2, "R1": 42.0, "metric": 42.0}
    assert len(rows) == 2


def _printer(max_iter: int) -> TrainerMetricPrinter:
    return TrainerMetricPrinter(SimpleNamespace(max_iter=max_iter), window=5)


def test_printer_hides_losses_no_longer_computed(caplog):
    printer = _printer(100)
    with EventStorage(0) as storage, caplog.at_level("INFO"):
        storage.epoch = 0
        for it in range(30):
            storage.iter = it
            storage.put_scalar("loss_phase1" if it < 10 else "loss_phase3", float(it))
        printer.write()
    line = caplog.records[-1].getMessage()
    assert "loss_phase3" in line and "loss_phase1" not in line


def test_printer_on_runs_shorter_than_the_timer_warm_up(caplog):
    """Two writes at the same iteration without any iteration time (1-2 iteration runs)."""
    printer = _printer(2)
    with EventStorage(0) as storage, caplog.at_level("INFO"):
        storage.epoch = 0
        storage.put_scalar("loss_sdm", 1.0)
        printer.write()
        printer.write()
        storage.iter = 1
        printer.write()
    assert "eta:" in caplog.records[-1].getMessage()
