"""Packaging seen from the code: one version, shipped configs by name (``fastreid_ext://`` in
``--config-file`` and ``_BASE_``), the console script's ``--help`` and start-up checks, and the
thin wrappers in ``tools/``."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest
import torch
from fastreid.config import CfgNode

import fastreid_ext
from fastreid_ext import model_zoo
from fastreid_ext.config import ConfigValueError
from fastreid_ext.engine import build_cfg
from fastreid_ext.engine.config_files import load_yaml_with_base
from fastreid_ext.engine.setup import (
    COMMON_OVERRIDES,
    argument_parser,
    check_device,
    plugins_from_config_file,
)
from fastreid_ext.tools import train_net as train_cli
from fastreid_ext.version import __version__

from .conftest import REPO

CONFIGS = REPO / "configs"
SHIPPED = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yml"))


def test_one_version_everywhere():
    """``fastreid_ext/version.py`` is the one source: the package and the installed metadata
    (pyproject's dynamic version) report it."""
    assert fastreid_ext.__version__ == __version__
    assert importlib.metadata.version("fastreid-ext") == __version__
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "fastreid_ext.version.__version__" }' in pyproject


def test_shipped_configs_resolve_by_name_in_a_checkout():
    assert model_zoo.configs_root() == CONFIGS
    assert model_zoo.list_configs() == SHIPPED
    path = model_zoo.get_config_file("Propot/cuhk.yml")
    assert path == str(CONFIGS / "Propot" / "cuhk.yml")
    assert model_zoo.get_config_file("fastreid_ext://Propot/cuhk.yml") == path
    assert model_zoo.resolve_config_path("configs/Propot/cuhk.yml") == "configs/Propot/cuhk.yml"


@pytest.mark.parametrize("name", ["Propot/cuhk.yaml", "fastreid_ext://Baseline/dmeo.yml", "../pyproject.toml", ""])  # fmt: skip
def test_unknown_config_name_lists_the_shipped_ones(name):
    with pytest.raises(FileNotFoundError, match="is not a shipped config") as info:
        model_zoo.get_config_file(name)
    message = str(info.value)
    assert "Propot/ablations/" in message and "table4_7_full" in message and "Base-CPCL" in message
    if "dmeo" in name:
        assert "Did you mean Baseline/demo.yml" in message


@pytest.mark.parametrize("name", SHIPPED)
def test_config_loading_equals_fastreids_own(name):
    """Our reader (which also resolves ``fastreid_ext://``) merges every shipped config exactly as
    fast-reid's ``CfgNode.load_yaml_with_base``."""
    path = str(CONFIGS / name)
    assert load_yaml_with_base(path) == CfgNode.load_yaml_with_base(path)
    assert load_yaml_with_base(f"fastreid_ext://{name}") == CfgNode.load_yaml_with_base(path)


def test_base_by_name_from_a_config_outside_the_repository(tmp_path):
    mine = tmp_path / "mine.yml"
    mine.write_text(
        "_BASE_: fastreid_ext://Propot/Base-Propot.yml\nSOLVER:\n  MAX_EPOCH: 3\nOUTPUT_DIR: o\n"
    )
    assert plugins_from_config_file(str(mine)) == ["propot"]
    ours = build_cfg(str(mine))
    reference = build_cfg(str(CONFIGS / "Propot" / "Base-Propot.yml"))
    assert ours.SOLVER.MAX_EPOCH == 3 and reference.SOLVER.MAX_EPOCH != 3
    reference.merge_from_list(["SOLVER.MAX_EPOCH", "3", "OUTPUT_DIR", "o"])
    assert ours.dump() == reference.dump()
    assert build_cfg("fastreid_ext://Baseline/demo.yml").dump() == (
        build_cfg(str(CONFIGS / "Baseline" / "demo.yml")).dump()
    )


def test_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yml").write_text("_BASE_: b.yml\n")
    (tmp_path / "b.yml").write_text("_BASE_: a.yml\n")
    with pytest.raises(ValueError, match="inherits from itself"):
        load_yaml_with_base(str(tmp_path / "a.yml"))


def test_help_lists_the_shipped_configs_and_common_overrides():
    text = argument_parser("fastreid-ext-train").format_help()
    for folder in ("Baseline/", "Propot/", "CPCL/", "CSDN/"):
        assert f"\n  {folder}" in text
    assert "+14 in ablations/" in text  # Propot's Table 4/5 rows
    for key, _ in COMMON_OVERRIDES:
        assert key in text
    for key in ("MODEL.DEVICE cpu", "MODEL.CLIP.WEIGHTS", "DATASETS.ROOT", "--num-gpus"):
        assert key in text
    assert "fastreid-ext-train --config-file fastreid_ext://Baseline/demo.yml" in text


def test_cuda_device_without_cuda_says_to_use_the_cpu(monkeypatch):
    cfg = build_cfg("fastreid_ext://Baseline/cuhk.yml")
    assert cfg.MODEL.DEVICE == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigValueError, match=r"MODEL\.DEVICE = 'cuda'.*add MODEL\.DEVICE cpu"):
        check_device(cfg)
    cfg.MODEL.DEVICE = "cpu"
    check_device(cfg)  # no error
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg.MODEL.DEVICE = "cuda"
    check_device(cfg)


def test_console_script_stops_before_launching(monkeypatch, capsys):
    """``MODEL.DEVICE cuda`` without CUDA and a missing config end with exit status 2 and one
    line naming the fix; no process is started."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train_cli, "launch", lambda *a, **k: pytest.fail("launched"))
    monkeypatch.setattr(sys, "argv", ["fastreid-ext-train"])
    with pytest.raises(SystemExit) as info:
        train_cli.main(["--config-file", "fastreid_ext://Baseline/cuhk.yml"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fastreid-ext-train: error: MODEL.DEVICE = 'cuda'")
    assert "add MODEL.DEVICE cpu" in err
    with pytest.raises(SystemExit) as info:
        train_cli.main(["--config-file", "fastreid_ext://Baseline/nope.yml"])
    assert info.value.code == 2 and "is not a shipped config" in capsys.readouterr().err


def test_console_script_passes_the_resolved_config_to_every_rank(monkeypatch):
    launched = {}

    def fake_launch(fn, num_gpus, **kwargs):
        launched.update(kwargs, num_gpus=num_gpus)

    monkeypatch.setattr(train_cli, "launch", fake_launch)
    argv = ["--config-file", "fastreid_ext://Baseline/demo.yml", "--num-gpus", "2"]
    assert train_cli.main(argv) == 0
    (args,) = launched["args"]
    assert args.config_file == str(CONFIGS / "Baseline" / "demo.yml")
    assert launched["num_gpus"] == 2 and launched["backend"] == "gloo"


def test_tools_scripts_are_thin_wrappers_of_the_console_scripts():
    import importlib

    # tools/<name>.py -> console script fastreid-ext-<name with - for _> (train_net: -train)
    names = [
        "train_net",
        "make_synthetic_data",
        "make_synthetic_vi_data",
        "extract_features",
        "search",
        "serve_search",
        "visualize_results",
        "export",
        "convert_checkpoint",
    ]
    for name in names:
        module = importlib.import_module(f"fastreid_ext.tools.{name}")
        text = (REPO / "tools" / f"{name}.py").read_text()
        assert f"from fastreid_ext.tools.{name} import main" in text
        assert len(text.splitlines()) < 25 and callable(module.main)
    scripts = importlib.metadata.distribution("fastreid-ext").entry_points
    console = {ep.name: ep.value for ep in scripts if ep.group == "console_scripts"}
    expected = {
        "fastreid-ext-" + ("train" if n == "train_net" else n.replace("_", "-")): (
            f"fastreid_ext.tools.{n}:main"
        )
        for n in names
    }
    assert console == expected
    assert not [ep for ep in scripts if ep.group == "fastreid_ext.plugins"]
