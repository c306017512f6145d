"""CPCL's config grammar: every invalid ``MODEL.CPCL`` value raises ``ConfigValueError`` naming
the full key and the allowed values (also when the model is built), the shipped configs are
valid and import only the ``cpcl`` package (a run's config holds CPCL's method keys and no
other method's), and every key is commented in ``cpcl/config.py`` and documented in the project
README."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from cpcl import CPCLT2I
from cpcl.config import check_cpcl_config
from fastreid_ext.config import ConfigValueError
from fastreid_ext.engine import build_cfg
from fastreid_ext.engine.setup import plugins_from_config_file

from .config_docs import assert_keys_documented
from .conftest import REPO

CONFIGS = REPO / "configs" / "CPCL"
PACKAGE = REPO / "projects" / "CPCL"
DEMO = str(CONFIGS / "demo.yml")
P = "MODEL.CPCL."

# (overrides, key named by the error, text of the allowed values)
INVALID = [
    ([P + "TRAIN_SET", "some"], P + "TRAIN_SET", "'either', 'both', 'all'"),
    ([P + "PCM.NAME", "single"], P + "PCM.NAME", "'hybrid', 'intra', 'cross'"),
    ([P + "PCM.TAU", "0.0"], P + "PCM.TAU", "> 0.0"),
    ([P + "PCM.WEIGHT", "-1.0"], P + "PCM.WEIGHT", ">= 0.0"),
    ([P + "ICPM.POSITIVES", "pid"], P + "ICPM.POSITIVES", "'image', 'text', 'either', 'instance'"),
    ([P + "ICPM.TAU", "-0.1"], P + "ICPM.TAU", ">= 0.0"),
    ([P + "ICPM.EPS", "-1.0"], P + "ICPM.EPS", ">= 0.0"),
    ([P + "ICPM.WEIGHT", "-1.0"], P + "ICPM.WEIGHT", ">= 0.0"),
    ([P + "PMM.UPDATE.NAME", "average"], P + "PMM.UPDATE.NAME", "'standard', 'multi_modal'"),
    ([P + "PMM.UPDATE.MOMENTUM", "1.5"], P + "PMM.UPDATE.MOMENTUM", ">= 0.0 and <= 1.0"),
    ([P + "CLUSTER.K1", "0"], P + "CLUSTER.K1", ">= 1"),
    ([P + "CLUSTER.K2", "0"], P + "CLUSTER.K2", ">= 1"),
    ([P + "CLUSTER.EPS", "0.0"], P + "CLUSTER.EPS", "> 0.0"),
    ([P + "CLUSTER.MIN_SAMPLES", "0"], P + "CLUSTER.MIN_SAMPLES", ">= 1"),
    ([P + "CLUSTER.START_EPOCH", "-1"], P + "CLUSTER.START_EPOCH", ">= 0"),
    ([P + "CLUSTER.PERIOD", "0"], P + "CLUSTER.PERIOD", ">= 1"),
    ([P + "CLUSTER.KNN_BACKEND", "annoy"], P + "CLUSTER.KNN_BACKEND", "'auto', 'faiss', 'torch'"),
    ([P + "CLUSTER.IMS_PER_BATCH", "-1"], P + "CLUSTER.IMS_PER_BATCH", ">= 0"),
    ([P + "OPLM.NAME", "off"], P + "OPLM.NAME", "'one_stage', 'two_stage'"),
    ([P + "OPLM.MIN_SIM", "1.5"], P + "OPLM.MIN_SIM", "<= 1.0"),
    (["MODEL.T2I.LOSSES", "['SDM', 'MLM']"], "MODEL.T2I.LOSSES", "SDM and ID need identity"),
    (
        [P + "PCM.ENABLED", "False", P + "ICPM.ENABLED", "False"],
        P + "ICPM.ENABLED",
        "nothing would train",
    ),
]


@pytest.mark.parametrize("opts,key,allowed", INVALID, ids=[row[1] for row in INVALID])
def test_invalid_values_name_the_key_and_the_allowed_values(opts, key, allowed):
    cfg = build_cfg(DEMO, opts)
    with pytest.raises(ConfigValueError) as err:
        check_cpcl_config(cfg)
    assert err.value.key == key and allowed in err.value.allowed
    assert str(err.value).startswith(f"{key} = ")
    # building the model runs the same check, before anything is constructed
    with pytest.raises(ConfigValueError, match=re.escape(key)):
        CPCLT2I(cfg)


def test_the_label_free_mlm_alone_is_something_to_train():
    cfg = build_cfg(DEMO, [P + "PCM.ENABLED", "False", P + "ICPM.ENABLED", "False"])
    cfg.MODEL.T2I.LOSSES = ["MLM"]
    check_cpcl_config(cfg)


def _shipped_configs():
    return sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yml"))


@pytest.mark.parametrize("name", _shipped_configs())
def test_shipped_configs_are_valid_and_import_only_cpcl(name):
    path = str(CONFIGS / name)
    assert plugins_from_config_file(path) == ["cpcl"]
    check_cpcl_config(build_cfg(path))


def test_a_cpcl_config_holds_no_other_methods_keys():
    """In a fresh process (other tests import every method package into this one)."""
    code = (
        "import json; from fastreid_ext.engine import build_cfg; "
        f"cfg = build_cfg({str(CONFIGS / 'cuhk.yml')!r}); "
        "print(json.dumps({'top': sorted(cfg), 'model': sorted(cfg.MODEL)}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    keys = json.loads(out.stdout.strip().splitlines()[-1])
    assert "CPCL" in keys["model"] and "CPCL" not in keys["top"]
    assert "PROPOT" not in keys["model"] and "CSDN" not in keys["model"]


def test_every_key_has_a_comment_and_a_readme_row():
    assert_keys_documented(
        build_cfg(DEMO).MODEL.CPCL, "CPCL", PACKAGE / "cpcl" / "config.py", PACKAGE / "README.md"
    )
