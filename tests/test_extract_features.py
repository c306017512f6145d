"""``tools/extract_features.py`` end to end (subprocesses): a dataset split and a folder of
images become index folders whose rows and features are the inference API's."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from fastreid_ext.data.text_image import load_text_image_dataset
from fastreid_ext.inference import GalleryIndex, Predictor

from .conftest import TOOLS, run_isolated, tiny_opts
from .test_inference_api import CSDN_DEMO, save_checkpoint, t2i_cfg

pytestmark = pytest.mark.slow

TOOL = str(TOOLS / "extract_features.py")


def extract(*args: str, ok: bool = True):
    run = run_isolated([sys.executable, TOOL, *args], timeout=300)
    if ok and run.returncode != 0:
        raise AssertionError(f"extract_features {args} failed:\n{run.stdout}\n{run.stderr}")
    return run


def test_help_lists_sources_and_index_kinds():
    run = extract("--help")
    for word in ("--dataset", "--images", "--split", "--kind", "--modality", "--output", "hnsw"):
        assert word in run.stdout, word
    assert "fastreid-ext-extract-features --config-file" in run.stdout  # the examples


def test_dataset_split_and_folder_become_indexes(synthetic_root, tmp_path):
    config, opts, cfg = t2i_cfg("Propot", synthetic_root, tmp_path)
    weights = str(save_checkpoint(cfg, tmp_path))
    common = ["--config-file", config, "--weights", weights, "--device", "cpu"]
    out = tmp_path / "split_index"
    run = extract(
        *common,
        "--dataset",
        "CUHKPEDES",
        "--root",
        synthetic_root,
        "--batch-size",
        "32",
        "--output",
        str(out),
        *tiny_opts(synthetic_root, str(tmp_path))[4:8],  # input sizes; SOLVER etc. do not count
    )
    assert f"written to:  {out}" in run.stdout and "images:      24" in run.stdout
    index = GalleryIndex.load(str(out))
    split = load_text_image_dataset("CUHKPEDES", cfg).split("test")
    assert index.paths == [os.path.abspath(p) for p in split.img_paths]
    assert index.pids == list(split.image_pids) and index.kind == "flat"
    predictor = Predictor.from_config(config, weights, opts, device="cpu")
    assert index.meta["fingerprint"] == predictor.fingerprint
    assert index.meta["source"]["split"] == "test" and index.meta["method"] == "PropotT2I"
    expected = predictor.encode_images(split.img_paths, batch_size=32, progress=False)
    assert torch.equal(index.features(), expected)
    # captions find their images through the saved index
    _, ids = index.search(predictor.encode_texts(split.captions, progress=False), 24)
    assert sorted(ids[0].tolist()) == list(range(24))

    folder = os.path.join(synthetic_root, "CUHK-PEDES", "imgs")
    out2 = tmp_path / "folder_index"
    run = extract(
        *common, "--images", folder, "--kind", "ivf", "--nlist", "4", "--output", str(out2)
    )
    index2 = GalleryIndex.load(str(out2))
    every = sorted(
        os.path.join(d, n) for d, _, names in os.walk(folder) for n in names if n.endswith(".jpg")
    )
    assert index2.paths == every and index2.pids is None and index2.roots == [folder]
    assert index2.kind == "ivf" and index2.meta["params"]["nlist"] == 4
    got = dict(zip(index2.paths, index2.features()))
    for path, feat in zip(split.img_paths, expected):
        torch.testing.assert_close(got[os.path.abspath(path)], feat, rtol=0, atol=1e-6)


def test_visible_infrared_split_keeps_each_images_modality(tmp_path):
    from fastreid_ext.data.vi import write_synthetic_sysu
    from fastreid_ext.engine import build_cfg

    from .test_inference_api import CSDN_OPTS

    root = str(tmp_path / "vi")
    write_synthetic_sysu(root, 14, 2, seed=2, image_size=(32, 16), split_counts=(8, 2, 4))
    opts = ["DATASETS.ROOT", root, *CSDN_OPTS]
    cfg = build_cfg(CSDN_DEMO, opts + ["MODEL.HEADS.NUM_CLASSES", "8"])
    weights = str(save_checkpoint(cfg, tmp_path))
    out = tmp_path / "vi_index"
    extract(
        "--config-file",
        CSDN_DEMO,
        "--weights",
        weights,
        "--dataset",
        "SYSUMM01CrossModal",
        "--kind",
        "hnsw",
        "--batch-size",
        "8",
        "--output",
        str(out),
        *opts,
    )
    index = GalleryIndex.load(str(out))
    assert set(index.modality) == {"visible", "infrared"} and index.camids and index.pids
    predictor = Predictor.from_config(CSDN_DEMO, weights, opts, device="cpu")
    feats = index.features()
    for name in ("visible", "infrared"):
        rows = [i for i, m in enumerate(index.modality) if m == name]
        api = predictor.encode_images(
            [index.paths[i] for i in rows], modality=name, batch_size=8, progress=False
        )
        assert torch.equal(feats[rows], api), name
    assert all(c in (3, 6) for c, m in zip(index.camids, index.modality) if m == "infrared")
    # a folder of one modality needs --modality
    run = extract(
        "--config-file",
        CSDN_DEMO,
        "--weights",
        weights,
        "--images",
        root,
        "--output",
        str(tmp_path / "x"),
        *opts,
        ok=False,
    )
    assert run.returncode == 2 and "modality='visible' or 'infrared'" in run.stderr


def test_errors_name_the_problem(tmp_path):
    run = extract(
        "--config-file",
        CSDN_DEMO,
        "--weights",
        str(tmp_path / "gone.pth"),
        "--images",
        str(tmp_path),
        "--output",
        str(tmp_path / "o"),
        ok=False,
    )
    assert run.returncode == 2 and "gone.pth" in run.stderr and "does not exist" in run.stderr
    assert not (tmp_path / "o").exists()
