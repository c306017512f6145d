"""Propot's config grammar: every invalid ``MODEL.PROPOT`` value raises ``ConfigValueError``
naming the full key and the allowed values (also when the modules are built), the shipped
configs are valid and import only the ``propot`` package, and every key is commented in
``propot/config.py`` and documented in the project README."""

from __future__ import annotations

import re

import pytest

from fastreid_ext.config import ConfigValueError
from fastreid_ext.engine import build_cfg
from fastreid_ext.engine.setup import plugins_from_config_file
from propot import PropotT2I
from propot.config import AGGREGATION_NAMES, check_propot_config
from propot.modeling import PROTOTYPE_AGGREGATIONS, PropotPrototypes

from .config_docs import assert_keys_documented
from .conftest import REPO
from .test_propot_modules import propot_cfg

CONFIGS = REPO / "configs" / "Propot"
PACKAGE = REPO / "projects" / "Propot"
P = "MODEL.PROPOT."

# (overrides, key named by the error, text of the allowed values)
INVALID = [
    ([P + "BLOCK.NUM_HEADS", "0"], P + "BLOCK.NUM_HEADS", ">= 1"),
    ([P + "BLOCK.FFN_RATIO", "0"], P + "BLOCK.FFN_RATIO", "> 0"),
    ([P + "BLOCK.DROPOUT", "1.0"], P + "BLOCK.DROPOUT", ">= 0 and < 1"),
    ([P + "INIT.IMAGE_SUM_OVER", "caption"], P + "INIT.IMAGE_SUM_OVER", "'pair', 'image'"),
    ([P + "INIT.IMS_PER_BATCH", "-1"], P + "INIT.IMS_PER_BATCH", ">= 0"),
    ([P + "DPP.NUM_CONTEXTS", "0"], P + "DPP.NUM_CONTEXTS", ">= 1"),
    ([P + "DPP.CONTEXT_INIT_STD", "-0.1"], P + "DPP.CONTEXT_INIT_STD", ">= 0"),
    ([P + "DPP.NUM_BLOCKS", "0"], P + "DPP.NUM_BLOCKS", ">= 1"),
    ([P + "DPP.SHARING", "per_call"], P + "DPP.SHARING", "'shared', 'per_modality'"),
    ([P + "IPP.NUM_BLOCKS", "0"], P + "IPP.NUM_BLOCKS", ">= 1"),
    ([P + "IPP.QUERY", "final"], P + "IPP.QUERY", "'initial', 'adapted'"),
    (
        [P + "IPP.QUERY", "adapted", P + "DPP.ENABLED", "False"],
        P + "IPP.QUERY",
        "'initial' while MODEL.PROPOT.DPP.ENABLED is False",
    ),
    ([P + "IPP.SHARING", "some"], P + "IPP.SHARING", "'shared', 'per_call'"),
    ([P + "AGGREGATION.NAME", "max"], P + "AGGREGATION.NAME", "'APA', 'sum', 'mean'"),
    (
        [
            P + "AGGREGATION.NAME",
            "learned",
            P + "DPP.ENABLED",
            "False",
            P + "IPP.INTRA.ENABLED",
            "False",
            P + "IPP.INTER.ENABLED",
            "False",
        ],
        P + "AGGREGATION.NAME",
        "while no candidate prototype is enabled",
    ),  # fmt: skip
    ([P + "AGGREGATION.APA.TAU", "0.0"], P + "AGGREGATION.APA.TAU", "> 0"),
    ([P + "AGGREGATION.MLP.HIDDEN_DIM", "0"], P + "AGGREGATION.MLP.HIDDEN_DIM", ">= 1"),
    ([P + "P2I.WEIGHT", "-0.2"], P + "P2I.WEIGHT", ">= 0"),
    ([P + "P2I.TAU", "0.0"], P + "P2I.TAU", "> 0"),
    ([P + "P2I.REDUCTION", "max"], P + "P2I.REDUCTION", "'mean', 'sum'"),
]


@pytest.mark.parametrize("opts,key,allowed", INVALID, ids=[row[1] for row in INVALID])
def test_invalid_values_name_the_key_and_the_allowed_values(opts, key, allowed):
    cfg = propot_cfg(opts)
    with pytest.raises(ConfigValueError) as err:
        check_propot_config(cfg)
    assert err.value.key == key and allowed in err.value.allowed
    assert str(err.value).startswith(f"{key} = ")
    # building the modules runs the same check, before anything is constructed
    with pytest.raises(ConfigValueError, match=re.escape(key)):
        PropotPrototypes(cfg, 12, 16)


def test_the_model_validates_its_keys_also_when_propot_is_disabled():
    cfg = propot_cfg([P + "ENABLED", "False", P + "P2I.REDUCTION", "max"])
    with pytest.raises(ConfigValueError, match=re.escape(P + "P2I.REDUCTION")):
        PropotT2I(cfg)


def test_query_adapted_without_dpp_is_valid_when_ipp_is_off():
    """IPP.QUERY only matters when an IPP call is enabled (Table 4 row 1 switches both off)."""
    off = [P + "DPP.ENABLED", "False", P + "IPP.INTRA.ENABLED", "False"]
    cfg = propot_cfg([*off, P + "IPP.INTER.ENABLED", "False", P + "IPP.QUERY", "adapted"])
    check_propot_config(cfg)
    assert PropotPrototypes(cfg, 12, 16).ipp is None
    with pytest.raises(ConfigValueError, match=re.escape(P + "IPP.QUERY")):
        check_propot_config(propot_cfg([*off, P + "IPP.QUERY", "adapted"]))


def test_heads_must_divide_the_feature_width():
    with pytest.raises(ConfigValueError, match="a divisor of the width 16"):
        PropotPrototypes(propot_cfg([P + "BLOCK.NUM_HEADS", "3"]), 12, 16)
    PropotPrototypes(propot_cfg([P + "BLOCK.NUM_HEADS", "4"]), 12, 16)


def test_every_aggregation_name_is_buildable():
    assert set(AGGREGATION_NAMES) == set(PROTOTYPE_AGGREGATIONS)


def _shipped_configs():
    return sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yml"))


@pytest.mark.parametrize("name", _shipped_configs())
def test_shipped_configs_are_valid_and_import_only_propot(name):
    path = str(CONFIGS / name)
    assert plugins_from_config_file(path) == ["propot"]
    check_propot_config(build_cfg(path))


def test_every_key_has_a_comment_and_a_readme_row():
    assert_keys_documented(
        propot_cfg().MODEL.PROPOT, "PROPOT", PACKAGE / "propot" / "config.py", PACKAGE / "README.md"
    )
