"""CSDN's config grammar: bad values fail naming the key and what is allowed, the shipped configs
(PLUGINS, dataset-root fallback, every ablation file) build the intended model, and the
variant keys reach the losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fastreid.config import get_cfg
from fastreid.modeling.meta_arch import build_model

import csdn  # noqa: F401  (registers CSDN, its trainer and config keys)
from csdn.config import HSE_NAMES, SII_NAMES, TEXT_TARGETS, check_csdn_config
from csdn.phases import PhasePlan
from fastreid_ext.config import ConfigValueError, add_fastreid_ext_config, apply_config_extensions

from .conftest import REPO
from .test_csdn_modules import _cfg, _image_batch

CONFIGS = REPO / "configs" / "CSDN"
TINY = ["MODEL.DEVICE", "cpu", "MODEL.CLIP.RANDOM_INIT", "True", "INPUT.SIZE_TRAIN", "[64,32]",
        "INPUT.SIZE_TEST", "[64,32]", "DATALOADER.NUM_INSTANCE", "2"]  # fmt: skip


def _file_cfg(path: Path, *opts: str):
    """A shipped config file with ``opts`` merged (``csdn`` is imported: no plugin loading)."""
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    apply_config_extensions(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.HEADS.NUM_CLASSES = 6
    return cfg


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("MODEL.CSDN.SII.NAME", "three_key", SII_NAMES),
        ("MODEL.CSDN.HSE.NAME", "triplet", HSE_NAMES),
        ("MODEL.CSDN.HSE.TEXT_TARGET", "both", TEXT_TARGETS),
    ],
)
def test_unknown_variant_names_the_key_and_the_allowed_values(key, value, allowed):
    with pytest.raises(ConfigValueError) as err:
        build_model(_cfg(key, value))
    assert err.value.key == key and err.value.value == value
    assert all(repr(a) in str(err.value) for a in allowed), str(err.value)


@pytest.mark.parametrize(
    "opts, key, needs",
    [
        (["MODEL.CSDN.MSPL.ENABLED", "False"], "MODEL.CSDN.SII.ENABLED", "MSPL.ENABLED is False"),
        (["MODEL.CSDN.SII.ENABLED", "False"], "MODEL.CSDN.HSE.TEXT_TARGET", "SII.ENABLED is False"),
        (["MODEL.CSDN.MSPL.ENABLED", "False", "MODEL.CSDN.SII.ENABLED", "False",
          "MODEL.CSDN.HSE.TEXT_TARGET", "modality"],
         "MODEL.CSDN.HSE.TEXT_TARGET", "MSPL.ENABLED is False"),
        (["MODEL.CSDN.HSE.TEXT_TARGET", "shared"], "MODEL.CSDN.HSE.TEXT_TARGET",
         "MSPL.ENABLED is True"),
        (["DATALOADER.NUM_INSTANCE", "1"], "MODEL.CSDN.MSEL.ENABLED", "NUM_INSTANCE < 2"),
        (["MODEL.CSDN.TRIPLET.WEIGHT", "-0.1"], "MODEL.CSDN.TRIPLET.WEIGHT", ">= 0.0"),
        (["MODEL.CSDN.HSE.CLIPREID.LABEL_SMOOTHING", "1.5"],
         "MODEL.CSDN.HSE.CLIPREID.LABEL_SMOOTHING", "<= 1.0"),
        (["MODEL.CSDN.PHASE2.EPOCHS", "-1"], "MODEL.CSDN.PHASE2.EPOCHS", ">= 0"),
        (["MODEL.CSDN.PHASE1.IMS_PER_BATCH", "0"], "MODEL.CSDN.PHASE1.IMS_PER_BATCH", ">= 1"),
    ],
)  # fmt: skip
def test_inconsistent_values_name_the_key_and_what_is_allowed(opts, key, needs):
    cfg = _cfg(*opts)
    with pytest.raises(ConfigValueError, match=needs) as err:
        check_csdn_config(cfg)
    assert err.value.key == key
    with pytest.raises(ConfigValueError):
        build_model(cfg)


def test_phase_plan_checks_its_epochs():
    with pytest.raises(ConfigValueError, match="SOLVER.MAX_EPOCH = 0"):
        PhasePlan(_cfg("SOLVER.MAX_EPOCH", "0"))
    with pytest.raises(ConfigValueError, match="MODEL.CSDN.PHASE1.EPOCHS = -2"):
        PhasePlan(_cfg("MODEL.CSDN.PHASE1.EPOCHS", "-2"))


def test_msel_switch_and_weight():
    off = build_model(_cfg("DATALOADER.NUM_INSTANCE", "1", "MODEL.CSDN.MSEL.ENABLED", "False"))
    assert "loss_msel" not in off.train()(_image_batch())
    torch.manual_seed(0)
    base = build_model(_cfg()).train()
    torch.manual_seed(0)
    double = build_model(_cfg("MODEL.CSDN.MSEL.WEIGHT", "2.0")).train()
    with torch.no_grad():
        a = base(_image_batch())["loss_msel"]
        b = double(_image_batch())["loss_msel"]
    assert float(a) > 0 and float(b) == pytest.approx(2 * float(a), rel=1e-6)


@torch.no_grad()
def test_clipreid_weight_and_label_smoothing_reach_the_loss():
    cfg = _cfg("MODEL.CSDN.HSE.NAME", "clipreid", "MODEL.CSDN.HSE.CLIPREID.WEIGHT", "0.7",
               "MODEL.CSDN.HSE.CLIPREID.LABEL_SMOOTHING", "0.2")  # fmt: skip
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    n, d = model.num_classes, model.text_bank_visible.shape[1]
    model.text_bank_visible.copy_(torch.randn(n, d, generator=g))
    model.text_bank_infrared.copy_(torch.randn(n, d, generator=g))
    b, views = 4, 2
    y = torch.tensor([0, 2, 2, 5])
    labels = torch.cat([y, y, y])
    f_p = torch.randn((views + 1) * b, d, generator=g)
    got = model._image_to_text_losses(f_p, labels, b, views)
    logits = torch.cat(
        [f_p[:8] @ model.text_bank_visible.t(), f_p[8:] @ model.text_bank_infrared.t()]
    )
    want = 0.7 * F.cross_entropy(logits, labels, label_smoothing=0.2)
    assert set(got) == {"loss_clipreid_i2t"}
    torch.testing.assert_close(got["loss_clipreid_i2t"], want)
    plain = 0.7 * F.cross_entropy(logits, labels)
    assert abs(float(plain - want)) > 1e-3  # the smoothing is applied


def test_shipped_configs_name_the_plugin_and_use_the_dataset_root_fallback():
    for name in ("sysu.yml", "regdb.yml"):
        cfg = _file_cfg(CONFIGS / name)
        assert cfg.PLUGINS == ["csdn"]
        assert cfg.DATASETS.ROOT == ""  # DATASETS.ROOT, else $FASTREID_DATASETS, else ./datasets
        assert cfg.TRAINER.NAME == "CSDNPhasedTrainer" and cfg.MODEL.META_ARCHITECTURE == "CSDN"


# file -> (prompt learners, SII, image-to-text loss names, ID weight)
ABLATIONS = {
    "sysu_clipreid_baseline.yml": (1, False, {"loss_clipreid_i2t"}, 1.0),
    "sysu_mspl.yml": (2, False, {"loss_clipreid_i2t"}, 1.0),
    "sysu_mspl_sii.yml": (2, True, {"loss_clipreid_i2t"}, 1.0),
    "sysu_vit.yml": (2, True, {"loss_hse_vis", "loss_hse_ir"}, 0.25),
}


def test_every_ablation_file_builds_its_model():
    assert sorted(p.name for p in (CONFIGS / "ablations").glob("*.yml")) == sorted(ABLATIONS)
    for name, (learners, sii, i2t, id_weight) in ABLATIONS.items():
        clip = "tiny-vit" if "vit" in name else "tiny-rn"
        cfg = _file_cfg(CONFIGS / "ablations" / name, *TINY, "MODEL.CLIP.NAME", clip)
        assert cfg.PLUGINS == ["csdn"] and cfg.OUTPUT_DIR.endswith(name[:-4])
        torch.manual_seed(0)
        model = build_model(cfg).train()
        assert len(model.prompt_learners) == learners, name
        assert (model.fusion is not None) is sii, name
        assert PhasePlan(cfg).epochs[1] == (cfg.MODEL.CSDN.PHASE2.EPOCHS if sii else 0)
        losses = model(_image_batch())
        assert set(losses) == {"loss_id", "loss_triplet", "loss_msel"} | i2t, name
        assert model.weights["id"] == id_weight, name
        t_vis, t_ir = model.text_targets(torch.tensor([1, 2]))
        # shared prompts and fused texts are one target for both modalities; "modality" is not
        assert torch.equal(t_vis, t_ir) is (cfg.MODEL.CSDN.HSE.TEXT_TARGET != "modality"), name


def _leaf_keys(node, prefix: str = "") -> list:
    out = []
    for k, v in node.items():
        out += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


def test_every_key_has_a_comment_and_a_readme_row():
    keys = _leaf_keys(_cfg().MODEL.CSDN)
    assert "HSE.CLIPREID.WEIGHT" in keys and "PHASE2.ETA_MIN_LR" in keys
    readme = (REPO / "projects" / "CSDN" / "README.md").read_text()
    table = readme.split("## Config keys (`MODEL.CSDN`)")[1].split("\n## ")[0]
    first_cells = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    documented = {name for cell in first_cells for name in cell.replace(",", " ").split()}
    assert {f"`{k}`" for k in keys} == documented
    source = (REPO / "projects" / "CSDN" / "csdn" / "config.py").read_text().splitlines()
    for i, line in enumerate(source):
        text = line.strip()
        if (text.startswith("_C.MODEL.CSDN.") or text.startswith("node.")) and "CN()" not in text:
            assert source[i - 1].strip().startswith("#"), f"no comment above: {text}"
