"""Synthetic text-image data: real on-disk formats, determinism, distinct identities, faithful captions."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastreid_ext.data.datasets import CUHKPEDES, RSTPReid
from fastreid_ext.data.synthetic import (
    ATTRIBUTE_SPACE_SIZE,
    PersonAttributes,
    caption_tokens,
    describe_person,
    identity_attributes,
    render_person,
    sample_identity_attributes,
    split_identity_counts,
    write_synthetic_dataset,
)
from fastreid_ext.data.synthetic.captions import (
    BAG_NOUNS,
    HAT_NOUNS,
    LOWER_NOUNS,
    SHOE_NOUNS,
    UPPER_NOUNS,
    colour_words,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = (32, 16)


def _tree_digest(folder: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _load_json(dataset_dir: str, name: str) -> list[dict]:
    with open(os.path.join(dataset_dir, name)) as f:
        return json.load(f)


def test_attribute_space_and_distinct_sampling():
    assert ATTRIBUTE_SPACE_SIZE == 2 * 10 * 2 * 8 * 3 * 8 * 7 * 4
    rng = np.random.default_rng(0)
    idx = rng.choice(ATTRIBUTE_SPACE_SIZE, size=3000, replace=False)
    decoded = {PersonAttributes.from_index(int(i)) for i in idx}
    assert len(decoded) == 3000  # the mixed-radix decoding is injective
    assert PersonAttributes.from_index(0) != PersonAttributes.from_index(ATTRIBUTE_SPACE_SIZE - 1)
    for bad in (-1, ATTRIBUTE_SPACE_SIZE):
        with pytest.raises(ValueError):
            PersonAttributes.from_index(bad)
    ids = identity_attributes(2000, seed=5)
    assert len(set(ids)) == 2000
    assert ids == identity_attributes(2000, seed=5) and ids != identity_attributes(2000, seed=6)
    with pytest.raises(ValueError, match="exceeds"):
        sample_identity_attributes(ATTRIBUTE_SPACE_SIZE + 1, rng)


def _alt(words) -> str:
    return "(?:" + "|".join(re.escape(w) for w in words) + ")"


def _assert_caption_describes(attrs: PersonAttributes, caption: str) -> None:
    c = caption.lower()

    def has(pattern: str) -> bool:
        return re.search(pattern, c) is not None

    assert has(rf"\b{_alt(colour_words(attrs.upper_colour))} (?:striped )?{_alt(UPPER_NOUNS)}\b"), c
    assert ("stripe" in c) == attrs.striped, c
    lower = LOWER_NOUNS[attrs.lower_type]
    assert has(rf"\b{_alt(colour_words(attrs.lower_colour))} {_alt(lower)}\b"), c
    others = [n for t, nouns in LOWER_NOUNS.items() if t != attrs.lower_type for n in nouns]
    assert not has(rf"\b{_alt(others)}\b"), c
    assert has(rf"\b{_alt(colour_words(attrs.shoe_colour))} {_alt(SHOE_NOUNS)}\b"), c
    kind, colour = attrs.headwear
    length = "short" if attrs.gender == "man" else "long"
    if kind == "hat":
        assert has(rf"\b{_alt(colour_words(colour))} {_alt(HAT_NOUNS)}\b") and "hair" not in c, c
    else:
        words = _alt(colour_words(colour))
        assert has(rf"\b{length} {words} hair\b|\b{length} hair is {words}\b"), c
        assert not has(rf"\b{_alt(HAT_NOUNS)}\b"), c
    bag_kind, bag_colour = attrs.bag
    all_bags = _alt([n for nouns in BAG_NOUNS.values() for n in nouns])
    if bag_kind == "none":
        assert not has(r"backpack|rucksack|handbag|shoulder bag"), c
        assert not has(rf"\b(?:black|brown|white|red|blue) {all_bags}\b"), c
    else:
        assert has(rf"\b{_alt(colour_words(bag_colour))} {_alt(BAG_NOUNS[bag_kind])}\b"), c
    wrong = (
        r"\b(?:she|her|woman|lady|female)\b"
        if attrs.gender == "man"
        else r"\b(?:he|his|man|guy|male)\b"
    )
    assert not has(wrong), c


def test_captions_state_every_attribute_with_varied_wording():
    rng = np.random.default_rng(1)
    captions = []
    for attrs in identity_attributes(150, seed=1):
        for _ in range(3):
            caption = describe_person(attrs, rng)
            _assert_caption_describes(attrs, caption)
            captions.append(caption)
    assert len(set(captions)) == len(captions)
    starts = {c.split()[0] for c in captions}
    assert len(starts) >= 5  # several templates / subjects
    assert caption_tokens("A man, in a RED t-shirt.") == ["a", "man", "in", "a", "red", "t-shirt"]


def test_render_size_variation_and_identity_signal():
    ids = identity_attributes(30, seed=2)
    feats, labels = [], []
    for i, attrs in enumerate(ids):
        for k in range(4):
            img = render_person(attrs, np.random.default_rng([2, i, k]), (64, 32))
            assert img.size == (32, 64) and img.mode == "RGB"
            # Saturation-weighted hue histogram per horizontal band (background is muted).
            hsv = np.asarray(img.convert("HSV"), dtype=np.float32) / 255
            weight = (hsv[..., 1] > 0.45).astype(np.float32)
            hue_bin = (hsv[..., 0] * 12).astype(int) % 12
            bands = np.array_split(np.arange(64), 8)
            f = np.concatenate(
                [
                    np.bincount(hue_bin[b].ravel(), weights=weight[b].ravel(), minlength=12)
                    for b in bands
                ]
            )
            feats.append(f / (np.linalg.norm(f) + 1e-6))
            labels.append(i)
    x, y = np.stack(feats), np.array(labels)
    # Images of one identity differ (position, scale, background, lighting, noise) ...
    assert np.abs(x[0] - x[1]).sum() > 0
    a = np.asarray(render_person(ids[0], np.random.default_rng(0), (64, 32)), dtype=np.float32)
    b = np.asarray(render_person(ids[0], np.random.default_rng(1), (64, 32)), dtype=np.float32)
    assert np.abs(a - b).mean() > 10
    # ... but keep the identity: leave-one-out nearest neighbour far above chance (1/30).
    sim = x @ x.T
    np.fill_diagonal(sim, -1)
    assert (y[sim.argmax(1)] == y).mean() > 0.4


def test_cuhk_format(tmp_path):
    d = write_synthetic_dataset(
        str(tmp_path), "cuhk", num_ids=12, images_per_id=3, seed=0, image_size=SIZE
    )
    assert d == os.path.join(str(tmp_path), "CUHK-PEDES")
    entries = _load_json(d, "reid_raw.json")
    assert len(entries) == 36
    assert all(
        list(e) == ["split", "captions", "file_path", "processed_tokens", "id"] for e in entries
    )
    assert sorted({e["id"] for e in entries}) == list(range(1, 13))  # CUHK ids start at 1
    n_train, n_val, n_test = split_identity_counts(12, "cuhk")
    splits = {e["id"]: e["split"] for e in entries}
    assert [splits[i] for i in range(1, 13)] == ["train"] * n_train + ["val"] * n_val + [
        "test"
    ] * n_test
    attrs = identity_attributes(12, seed=0)
    for e in entries:
        assert len(e["captions"]) == 2
        assert e["processed_tokens"] == [caption_tokens(c) for c in e["captions"]]
        assert re.fullmatch(
            r"(train_query/p\d+_s\d+|test_query/p\d+_s\d+|Market/\d{4}_c\d+s1_\d{6}_00|CUHK01/\d{7})\.jpg",
            e["file_path"],
        )
        if e["file_path"].startswith(("train_query", "test_query")):
            assert e["file_path"].split("/")[1].startswith(f"p{e['id']}_")
            assert e["file_path"].startswith(
                "train_query" if e["split"] == "train" else "test_query"
            )
        for c in e["captions"]:
            _assert_caption_describes(attrs[e["id"] - 1], c)
    assert len({e["file_path"] for e in entries}) == len(entries)
    with Image.open(os.path.join(d, "imgs", entries[0]["file_path"])) as im:
        assert im.format == "JPEG" and im.size == (SIZE[1], SIZE[0])


def test_icfg_format(tmp_path):
    d = write_synthetic_dataset(
        str(tmp_path), "icfg", num_ids=8, images_per_id=3, seed=0, image_size=SIZE
    )
    assert os.path.basename(d) == "ICFG-PEDES"
    entries = _load_json(d, "ICFG-PEDES.json")
    assert sorted({e["id"] for e in entries}) == list(range(8))
    assert {e["split"] for e in entries} == {"train", "test"}  # no val split
    assert all(len(e["captions"]) == 1 for e in entries)
    for e in entries:
        m = re.fullmatch(
            r"(train|test)/(\d{4})/(\d{4})_\d{3}_\d{2}_\d{4}[a-z]+_\d{4,}_0\.jpg", e["file_path"]
        )
        assert m and m.group(1) == e["split"] and m.group(2) == m.group(3)
    with pytest.raises(ValueError, match="no val split"):
        write_synthetic_dataset(
            str(tmp_path / "x"), "icfg", 8, 1, split_fractions=(0.5, 0.25, 0.25)
        )


def test_rstp_format(tmp_path):
    d = write_synthetic_dataset(
        str(tmp_path),
        "rstp",
        num_ids=10,
        images_per_id=2,
        seed=0,
        image_size=SIZE,
        split_counts=(6, 2, 2),
    )
    entries = _load_json(d, "data_captions.json")
    assert all(list(e) == ["id", "img_path", "captions", "split"] for e in entries)
    assert [e["split"] for e in entries] == ["train"] * 12 + ["val"] * 4 + ["test"] * 4
    assert all(len(e["captions"]) == 2 for e in entries)
    for e in entries:
        m = re.fullmatch(r"(\d{4})_c(\d{1,2})_\d{4,}\.jpg", e["img_path"])
        assert m and int(m.group(1)) == e["id"] and 1 <= int(m.group(2)) <= 15
    assert sorted(os.listdir(os.path.join(d, "imgs"))) == sorted(e["img_path"] for e in entries)
    ds = RSTPReid(root=str(tmp_path))
    assert (len(ds.train), ds.val.num_captions, ds.test.num_images) == (24, 8, 4)


def test_same_seed_is_byte_identical_and_seed_matters(tmp_path):
    kwargs = dict(fmt="cuhk", num_ids=6, images_per_id=2, image_size=SIZE)
    a = _tree_digest(write_synthetic_dataset(str(tmp_path / "a"), seed=7, **kwargs))
    b = _tree_digest(write_synthetic_dataset(str(tmp_path / "b"), seed=7, **kwargs))
    c = _tree_digest(write_synthetic_dataset(str(tmp_path / "c"), seed=8, **kwargs))
    assert a == b and len(a) == 13
    assert a["reid_raw.json"] != c["reid_raw.json"]
    assert not set(v for k, v in a.items() if k.endswith(".jpg")) & set(c.values())


def test_split_and_argument_errors(tmp_path):
    assert split_identity_counts(10, "cuhk") == (8, 1, 1)
    assert split_identity_counts(3, "rstp") == (1, 1, 1)  # positive fractions get >= 1 id
    assert split_identity_counts(10, "icfg", split_counts=(7, 0, 3)) == (7, 0, 3)
    with pytest.raises(ValueError, match="unknown format"):
        split_identity_counts(10, "market")
    with pytest.raises(ValueError, match="must sum to num_ids"):
        split_identity_counts(10, "cuhk", split_counts=(5, 2, 2))
    with pytest.raises(ValueError, match="not both"):
        split_identity_counts(10, "cuhk", (0.8, 0.1, 0.1), (8, 1, 1))
    with pytest.raises(ValueError, match="at least one train and one test"):
        split_identity_counts(2, "cuhk")
    with pytest.raises(ValueError, match="summing to 1"):
        split_identity_counts(10, "cuhk", split_fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="images_per_id"):
        write_synthetic_dataset(str(tmp_path), "cuhk", 10, 0)


def test_existing_dataset_needs_overwrite(tmp_path):
    d = write_synthetic_dataset(
        str(tmp_path), "cuhk", num_ids=5, images_per_id=1, seed=0, image_size=SIZE
    )
    stale = Path(d) / "imgs" / "stale.jpg"
    stale.touch()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_synthetic_dataset(
            str(tmp_path), "cuhk", num_ids=5, images_per_id=1, seed=1, image_size=SIZE
        )
    write_synthetic_dataset(
        str(tmp_path), "cuhk", num_ids=5, images_per_id=2, seed=1, image_size=SIZE, overwrite=True
    )
    assert not stale.exists()
    assert CUHKPEDES(root=str(tmp_path)).num_train_images == 2 * split_identity_counts(5, "cuhk")[0]


def test_cli_in_process_and_as_script(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "make_synthetic_data", REPO / "tools" / "make_synthetic_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--format", "rstp", "--root", str(tmp_path), "--num-ids", "6", "--images-per-id", "2", "--seed", "3",
            "--height", "32", "--width", "16", "--split-counts", "4", "1", "1"]  # fmt: skip
    assert module.main(args) == 0
    out = capsys.readouterr().out
    assert os.path.join(str(tmp_path), "RSTPReid") in out
    assert (
        "train: 4 ids, 8 images, 16 captions" in out and "test : 1 ids, 2 images, 4 captions" in out
    )
    assert module.main(args) == 2  # exists, no --overwrite
    assert "overwrite" in capsys.readouterr().err

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "tools/make_synthetic_data.py", "--format", "icfg", "--root", str(tmp_path),
         "--num-ids", "4", "--images-per-id", "1", "--height", "32", "--width", "16"],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ICFG-PEDES" in proc.stdout and "train: 3 ids, 3 images, 3 captions" in proc.stdout
