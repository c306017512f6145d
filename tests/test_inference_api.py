"""The inference API (``fastreid_ext.inference.Predictor``): its features are exactly the ones the
evaluators rank with, it loads checkpoints without any training set, and bad input gives errors
that name what is wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fastreid_ext.data.text_image import load_text_image_dataset
from fastreid_ext.data.vi import write_synthetic_sysu
from fastreid_ext.data.vi.base import INFRARED, VISIBLE
from fastreid_ext.engine import build_cfg
from fastreid_ext.engine import trainer as trainer_module
from fastreid_ext.engine.checkpoint import (
    MODEL_INFO_KEY,
    ExtCheckpointer,
    build_model_info,
    infer_num_classes,
)
from fastreid_ext.engine.trainer import ExtTrainer
from fastreid_ext.evaluation import t2i_evaluator, vi_evaluator
from fastreid_ext.evaluation.inference import run_inference
from fastreid_ext.inference import Predictor
from fastreid_ext.registry import TRAINER_REGISTRY, lookup

from .conftest import REPO, tiny_opts

CONFIGS = REPO / "configs"
T2I_CONFIGS = {
    "Baseline": ("Baseline/demo.yml", 24),
    "Propot": ("Propot/demo.yml", 24),
    "CPCL": ("CPCL/demo.yml", 0),
}
CSDN_DEMO = str(CONFIGS / "CSDN" / "demo.yml")
CSDN_OPTS = [
    "INPUT.SIZE_TRAIN",
    "[32,16]",
    "INPUT.SIZE_TEST",
    "[32,16]",
    "DATALOADER.NUM_INSTANCE",
    "2",
    "DATALOADER.NUM_WORKERS",
    "0",
    "TEST.IMS_PER_BATCH",
    "8",
    "TEST.VI.TRIALS",
    "2",
]


def save_checkpoint(cfg, folder: Path, model_info: bool = True, seed: int = 0) -> Path:
    """A random-init model of ``cfg`` saved as the trainer saves it (``model_final.pth``); a
    CSDN model's infrared stem is moved away from its visible one (they start equal)."""
    torch.manual_seed(seed)
    model = lookup(TRAINER_REGISTRY, cfg.TRAINER.NAME, "TRAINER.NAME").build_model(cfg)
    if hasattr(model, "image_encoder"):
        with torch.no_grad():
            for p in model.image_encoder.stems[INFRARED].parameters():
                p.add_(0.1 * torch.randn_like(p))
    info = build_model_info(cfg) if model_info else None
    ExtCheckpointer(model, str(folder), save_to_disk=True, model_info=info).save("model_final")
    return folder / "model_final.pth"


def t2i_cfg(method: str, root: str, out: Path, *extra: str):
    config, classes = T2I_CONFIGS[method]
    opts = tiny_opts(root, str(out)) + ["MODEL.HEADS.NUM_CLASSES", str(classes), *extra]
    return str(CONFIGS / config), opts, build_cfg(str(CONFIGS / config), opts)


def evaluator_features(monkeypatch, module, name: str, cfg, model, dataset: str):
    """The arguments the evaluator of ``module`` passes to its ranking function ``name``
    (``retrieval_metrics(queries, gallery, ...)`` / ``evaluate_plan(plan, feats, ...)``) when it
    evaluates ``model`` on ``dataset``."""
    seen = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    evaluator_cls = getattr(module, _EVALUATORS[module.__name__])
    loader, evaluator = evaluator_cls.build(cfg, dataset)
    run_inference(model, loader, evaluator)
    return seen[0], evaluator


_EVALUATORS = {
    t2i_evaluator.__name__: "TextImageEvaluator",
    vi_evaluator.__name__: "VIReIDEvaluator",
}


@pytest.fixture(scope="module")
def vi_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("vi_api"))
    write_synthetic_sysu(
        root, num_ids=14, images_per_camera=2, seed=2, image_size=(32, 16), split_counts=(8, 2, 4)
    )
    return root


@pytest.fixture(scope="module")
def csdn(vi_root, tmp_path_factory):
    """(config opts, cfg, checkpoint path) of a random CSDN model with 8 training classes."""
    out = tmp_path_factory.mktemp("csdn_api")
    opts = ["DATASETS.ROOT", vi_root, "OUTPUT_DIR", str(out), *CSDN_OPTS]
    cfg = build_cfg(CSDN_DEMO, opts + ["MODEL.HEADS.NUM_CLASSES", "8"])
    return opts, cfg, save_checkpoint(cfg, out)


# ---------------------------------------------------------------------------------- equality
@pytest.mark.parametrize("method", sorted(T2I_CONFIGS))
def test_text_image_features_equal_the_evaluators(method, synthetic_root, tmp_path, monkeypatch):
    config, opts, cfg = t2i_cfg(method, synthetic_root, tmp_path)
    weights = save_checkpoint(cfg, tmp_path)
    model = ExtTrainer.build_model(cfg)
    model.load_state_dict(torch.load(weights, weights_only=True)["model"])
    (queries, gallery, *_), _ = evaluator_features(
        monkeypatch, t2i_evaluator, "retrieval_metrics", cfg, model, "CUHKPEDES"
    )
    predictor = Predictor.from_config(config, weights, tiny_opts(synthetic_root, str(tmp_path)))
    split = load_text_image_dataset("CUHKPEDES", cfg).split("test")
    bs = cfg.TEST.IMS_PER_BATCH
    images = predictor.encode_images(split.img_paths, batch_size=bs, progress=False)
    texts = predictor.encode_texts(split.captions, batch_size=bs, progress=False)
    assert images.dtype == texts.dtype == torch.float32 and images.device.type == "cpu"
    assert images.shape == gallery.shape and texts.shape == queries.shape
    assert torch.equal(images, gallery) and torch.equal(texts, queries)
    torch.testing.assert_close(images.norm(dim=1), torch.ones(len(images)))
    # the same images as a transformed tensor batch give the same features
    tensor = torch.stack([predictor.image_transform(_open(p)) for p in split.img_paths])
    assert torch.equal(predictor.encode_images(tensor, batch_size=bs, progress=False), gallery)
    assert predictor.task == "text-image" and predictor.cfg.is_frozen()
    assert predictor.cfg.MODEL.HEADS.NUM_CLASSES == T2I_CONFIGS[method][1]


def _open(path):
    from fastreid_ext.data.text_image import read_image

    return read_image(path)


def test_csdn_features_equal_the_evaluators_in_both_modalities(csdn, monkeypatch):
    opts, cfg, weights = csdn
    model = ExtTrainer.build_model(cfg)
    model.load_state_dict(torch.load(weights, weights_only=True)["model"])
    (plan, feats, *_), evaluator = evaluator_features(
        monkeypatch, vi_evaluator, "evaluate_plan", cfg, model, "SYSUMM01CrossModal"
    )
    predictor = Predictor.from_config(CSDN_DEMO, weights, opts, device="cpu")
    assert predictor.task == "visible-infrared" and predictor.cfg.MODEL.HEADS.NUM_CLASSES == 8
    bs = cfg.TEST.IMS_PER_BATCH
    for flag, name in ((VISIBLE, "visible"), (INFRARED, "infrared")):
        rows = [i for i, x in enumerate(plan.images) if x.modality == flag]
        paths = [plan.images[i].img_path for i in rows]
        api = predictor.encode_images(paths, modality=name, batch_size=bs, progress=False)
        assert torch.equal(api, feats[rows]), name
        other = "infrared" if name == "visible" else "visible"
        swapped = predictor.encode_images(paths, modality=other, batch_size=bs, progress=False)
        assert not torch.allclose(swapped, api, atol=1e-3)  # each modality has its own stem
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(len(feats)))


# ---------------------------------------------------------------------------------- loading
def test_loads_without_any_training_set(synthetic_root, tmp_path, monkeypatch):
    config, opts, cfg = t2i_cfg("Propot", synthetic_root, tmp_path)
    weights = save_checkpoint(cfg, tmp_path)
    stored = torch.load(weights, weights_only=True)[MODEL_INFO_KEY]
    assert stored["data_config"] == {"MODEL.HEADS.NUM_CLASSES": 24}
    assert stored["meta_architecture"] == "PropotT2I"
    gone = str(tmp_path / "no_datasets_here")
    predictor = Predictor.from_config(config, weights, ["DATASETS.ROOT", gone], device="cpu")
    assert predictor.cfg.MODEL.HEADS.NUM_CLASSES == 24 and not os.path.exists(gone)
    model = ExtTrainer.build_model(cfg).eval()
    model.load_state_dict(torch.load(weights, weights_only=True)["model"])
    x = torch.rand(3, 3, 64, 32) * 255
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model({"images": x})["image_feats"], dim=1)
    assert torch.equal(predictor.encode_images(x, progress=False), direct)
    # --eval-only's count: read from the checkpoint; neither the training set nor the shapes
    eval_cfg = build_cfg(config, ["DATASETS.ROOT", gone, "MODEL.WEIGHTS", str(weights)])

    def unused(*args, **kwargs):
        raise AssertionError("not needed when the checkpoint stores the count")

    monkeypatch.setattr(ExtTrainer, "build_train_set", classmethod(unused))
    monkeypatch.setattr(trainer_module, "infer_num_classes", unused)
    assert ExtTrainer.num_train_classes(eval_cfg) == 24


def test_csdn_eval_count_from_checkpoint_without_dataset(csdn, tmp_path):
    opts, _, weights = csdn
    trainer = lookup(TRAINER_REGISTRY, "CSDNPhasedTrainer", "TRAINER.NAME")
    cfg = build_cfg(
        CSDN_DEMO, ["DATASETS.ROOT", str(tmp_path / "none"), "MODEL.WEIGHTS", str(weights)]
    )
    assert trainer.num_train_classes(cfg) == 8


def test_older_checkpoints_get_their_class_count_from_tensor_shapes(synthetic_root, tmp_path):
    config, opts, cfg = t2i_cfg("Propot", synthetic_root, tmp_path)
    weights = save_checkpoint(cfg, tmp_path, model_info=False)
    assert MODEL_INFO_KEY not in torch.load(weights, weights_only=True)
    gone = ["DATASETS.ROOT", str(tmp_path / "none")]
    predictor = Predictor.from_config(config, weights, gone, device="cpu")
    assert predictor.cfg.MODEL.HEADS.NUM_CLASSES == 24
    eval_cfg = build_cfg(config, gone + ["MODEL.WEIGHTS", str(weights)])
    assert ExtTrainer.num_train_classes(eval_cfg) == 24  # training set missing: inferred
    state = torch.load(weights, weights_only=True)["model"]
    state["prototypes.initial_v"] = state["prototypes.initial_v"][:23]
    with pytest.raises(ValueError, match=r"MODEL.HEADS.NUM_CLASSES.*prototypes.initial_v"):
        infer_num_classes(eval_cfg, ExtTrainer.build_model, state, "x.pth")
    # an encoders-only checkpoint: the count does not matter for inference and cannot be known
    slim = {k: v for k, v in state.items() if not k.startswith(("classifier.", "prototypes."))}
    torch.save({"model": slim}, tmp_path / "slim.pth")
    slim_cfg = build_cfg(config, gone + ["MODEL.WEIGHTS", str(tmp_path / "slim.pth")])
    with pytest.raises(Exception, match="CUHK-PEDES"):
        ExtTrainer.num_train_classes(slim_cfg)  # the missing training set's own error
    slim_predictor = Predictor.from_config(config, tmp_path / "slim.pth", gone, device="cpu")
    x = torch.rand(2, 3, 64, 32) * 255
    assert torch.equal(
        slim_predictor.encode_images(x, progress=False), predictor.encode_images(x, progress=False)
    )


def test_trainer_checkpoints_record_the_model_info(synthetic_root, tmp_path):
    _, _, cfg = t2i_cfg("Baseline", synthetic_root, tmp_path, "MODEL.HEADS.NUM_CLASSES", "0")
    trainer = ExtTrainer(cfg)
    assert trainer.cfg.MODEL.HEADS.NUM_CLASSES == 24  # from the training set
    trainer.checkpointer.save("probe")
    info = torch.load(tmp_path / "probe.pth", weights_only=True)[MODEL_INFO_KEY]
    assert info["data_config"] == {"MODEL.HEADS.NUM_CLASSES": 24}
    assert info["meta_architecture"] == "ClipTextImageBaseline"
    assert "NUM_CLASSES: 24" in info["config"]


# ---------------------------------------------------------------------------------- errors
def test_bad_inputs_give_clear_errors(synthetic_root, tmp_path, csdn):
    config, opts, cfg = t2i_cfg("Baseline", synthetic_root, tmp_path)
    weights = save_checkpoint(cfg, tmp_path)
    p = Predictor.from_config(config, weights, opts, device="cpu")
    with pytest.raises(ValueError, match="text-image method"):
        p.encode_images(torch.zeros(1, 3, 64, 32), modality="visible")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        p.encode_images([str(tmp_path / "nope.jpg")])
    with pytest.raises(TypeError, match="not one string"):
        p.encode_texts("a man")
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        p.encode_images(torch.zeros(3, 64, 32))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        Predictor.from_config(config, tmp_path / "missing.pth", opts)
    with pytest.raises(ValueError, match="NUM_CLASSES is 7 in the config.*24"):
        Predictor.from_config(config, weights, opts + ["MODEL.HEADS.NUM_CLASSES", "7"])
    csdn_opts, _, csdn_weights = csdn
    vi = Predictor.from_config(CSDN_DEMO, csdn_weights, csdn_opts, device="cpu")
    with pytest.raises(ValueError, match="encodes images only"):
        vi.encode_texts(["a man"])
    with pytest.raises(ValueError, match="modality='visible' or 'infrared'"):
        vi.encode_images(torch.zeros(1, 3, 32, 16))
    # checkpoint of another method: named by the stored architecture ...
    with pytest.raises(ValueError, match="holds a CSDN model.*ClipTextImageBaseline"):
        Predictor.from_config(config, csdn_weights, opts)
    # ... and by the keys when the checkpoint has no model info
    ckpt = torch.load(csdn_weights, weights_only=True)
    torch.save({"model": ckpt["model"]}, tmp_path / "old_csdn.pth")
    with pytest.raises(
        ValueError, match=r"missing keys: backbone\..*unexpected keys: .*image_encoder"
    ):
        Predictor.from_config(config, tmp_path / "old_csdn.pth", opts)


def test_loading_is_strict_about_inference_tensors(synthetic_root, tmp_path):
    config, opts, cfg = t2i_cfg("Baseline", synthetic_root, tmp_path)
    weights = save_checkpoint(cfg, tmp_path)
    ckpt = torch.load(weights, weights_only=True)
    extra = dict(ckpt, model=dict(ckpt["model"], **{"backbone.bogus": torch.zeros(1)}))
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected keys: backbone.bogus"):
        Predictor.from_config(config, tmp_path / "extra.pth", opts)
    name = next(k for k in ckpt["model"] if k.startswith("backbone."))
    fewer = dict(ckpt, model={k: v for k, v in ckpt["model"].items() if k != name})
    torch.save(fewer, tmp_path / "fewer.pth")
    with pytest.raises(ValueError, match=f"missing keys: {name}"):
        Predictor.from_config(config, tmp_path / "fewer.pth", opts)


def test_fingerprint_follows_config_and_weights_not_paths(synthetic_root, tmp_path):
    config, opts, cfg = t2i_cfg("Baseline", synthetic_root, tmp_path)
    weights = save_checkpoint(cfg, tmp_path / "a")
    base = Predictor.from_config(config, weights, opts, device="cpu").fingerprint
    assert len(base) == 16 and int(base, 16) >= 0
    moved = tmp_path / "b" / "copy.pth"
    moved.parent.mkdir()
    moved.write_bytes(weights.read_bytes())
    elsewhere = ["DATASETS.ROOT", "/elsewhere", "OUTPUT_DIR", "/tmp/x", "TEST.IMS_PER_BATCH", "3"]
    elsewhere += ["SOLVER.BASE_LR", "0.5", "MODEL.DEVICE", "cpu"]  # training / placement keys
    assert Predictor.from_config(config, moved, opts + elsewhere).fingerprint == base
    other = save_checkpoint(cfg, tmp_path / "c", seed=1)
    assert Predictor.from_config(config, other, opts).fingerprint != base
    resized = opts + ["INPUT.SIZE_TEST", "[96,48]"]
    assert Predictor.from_config(config, weights, resized).fingerprint != base


def test_fingerprint_ignores_the_nodes_of_other_loaded_methods(
    synthetic_root, tmp_path, monkeypatch
):
    """A process that imported other methods has their ``MODEL.<METHOD>`` nodes (at defaults)
    in every config; the fingerprint of a model must not depend on them."""
    from fastreid.config import CfgNode

    from fastreid_ext.config import extensions
    from fastreid_ext.inference.loading import fingerprint

    config, opts, cfg = t2i_cfg("Baseline", synthetic_root, tmp_path)
    weights = str(save_checkpoint(cfg, tmp_path))
    base = fingerprint(cfg, weights)

    def add_other_method(c):
        if "OTHERMETHOD" not in c.MODEL:
            c.MODEL.OTHERMETHOD = CfgNode({"WEIGHT": 1.0})

    monkeypatch.setattr(
        extensions, "CONFIG_EXTENSIONS", [*extensions.CONFIG_EXTENSIONS, add_other_method]
    )
    with_other = build_cfg(config, opts)
    assert with_other.MODEL.OTHERMETHOD.WEIGHT == 1.0
    assert fingerprint(with_other, weights) == base
    with_other.MODEL.OTHERMETHOD.WEIGHT = 2.0  # a non-default value of a method key counts
    assert fingerprint(with_other, weights) != base


@pytest.mark.slow
def test_eval_only_runs_without_the_training_set(synthetic_root, tmp_path):
    """``train_net.py --eval-only`` of a checkpoint whose training data (here ICFG-PEDES) is not
    on this machine: the class count comes from the checkpoint."""
    import json

    from .conftest import run_train_net

    config, opts, cfg = t2i_cfg("Baseline", synthetic_root, tmp_path)
    weights = save_checkpoint(cfg, tmp_path)
    assert not os.path.exists(os.path.join(synthetic_root, "ICFG-PEDES"))
    out = tmp_path / "eval"
    run_train_net(
        ["--config-file", config, "--eval-only"]
        + tiny_opts(synthetic_root, str(out))
        + ["MODEL.WEIGHTS", str(weights), "DATASETS.NAMES", '("ICFGPEDES",)']
    )
    results = json.loads((out / "eval_results.json").read_text())
    model = ExtTrainer.build_model(cfg)
    model.load_state_dict(torch.load(weights, weights_only=True)["model"])
    expected = ExtTrainer.test(cfg, model)
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert results[key] == pytest.approx(expected[key], abs=1e-9), key
