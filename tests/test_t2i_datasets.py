"""Text-image dataset parsing: CUHK-PEDES / ICFG-PEDES / RSTPReid loaders, IRRA conventions, validation."""

from __future__ import annotations

import json
import logging
import os

import pytest

from fastreid_ext.data.datasets import (
    CUHKPEDES,
    ICFGPEDES,
    DatasetFormatError,
    RSTPReid,
    check_relative_image_path,
)
from fastreid_ext.data.synthetic import split_identity_counts, write_synthetic_dataset


def _entry(raw_id, split, path, captions=("a man in a red shirt",), key="file_path"):
    return {"split": split, "captions": list(captions), key: path, "id": raw_id}


def _make(root, entries, cls=CUHKPEDES, annotation=None, images=True):
    """Write ``entries`` as cls's annotation file and create (empty) image files for them."""
    d = root / cls.dataset_folder
    (d / "imgs").mkdir(parents=True, exist_ok=True)
    if images:
        for e in entries if isinstance(entries, list) else []:
            rel = e.get(cls.image_key) if isinstance(e, dict) else None
            if isinstance(rel, str) and rel and not os.path.isabs(rel) and ".." not in rel:
                (d / "imgs" / rel).parent.mkdir(parents=True, exist_ok=True)
                (d / "imgs" / rel).touch()
    text = entries if isinstance(entries, str) else json.dumps(entries)
    (d / (annotation or cls.annotation_files[0])).write_text(text)
    return d


def _valid_entries():
    return [
        _entry(5, "train", "train_query/p5_s1.jpg", ["c0", "c1"]),
        _entry(3, "train", "Market/0003_c1s1_000001_00.jpg", ["c2"]),
        _entry(5, "train", "train_query/p5_s2.jpg", ["c3"]),
        _entry(9, "val", "test_query/p9_s3.jpg", ["v0"]),
        _entry(10, "dev", "test_query/p10_s4.jpg", ["v1", "v2"]),  # unknown split -> val (IRRA)
        _entry(20, "test", "test_query/p20_s5.jpg", ["t0", "t1"]),
        _entry(21, "test", "test_query/p21_s6.jpg", ["t2"]),
        _entry(20, "test", "test_query/p20_s7.jpg", ["t3"]),
    ]


def test_registered_in_fastreid_registry():
    from fastreid.data.datasets import DATASET_REGISTRY

    assert DATASET_REGISTRY.get("CUHKPEDES") is CUHKPEDES
    assert DATASET_REGISTRY.get("ICFGPEDES") is ICFGPEDES
    assert DATASET_REGISTRY.get("RSTPReid") is RSTPReid


def test_hand_made_annotation_parsed_like_irra(tmp_path):
    d = _make(tmp_path, _valid_entries())
    ds = CUHKPEDES(root=str(tmp_path))
    imgs = os.path.join(str(d), "imgs")
    assert ds.dataset_dir == str(d)
    # Train: one pair per caption; sorted raw ids -> contiguous pids; image_id per json entry.
    assert ds.train_pid_map == {3: 0, 5: 1}
    assert ds.num_train_pids == 2 and ds.num_train_images == 3
    assert [(p.pid, p.image_id, p.caption) for p in ds.train] == [
        (1, 0, "c0"),
        (1, 0, "c1"),
        (0, 1, "c2"),
        (1, 2, "c3"),
    ]
    assert ds.train[2].img_path == os.path.join(imgs, "Market/0003_c1s1_000001_00.jpg")
    # Val collects "val" and "dev"; raw ids kept.
    assert ds.val.image_pids == [9, 10]
    assert ds.val.caption_pids == [9, 10, 10]
    assert ds.val.caption_image_ids == [0, 1, 1]
    # Test: gallery = images, queries = captions pointing at their own gallery image.
    t = ds.split("test")
    assert t.image_pids == [20, 21, 20]
    assert t.img_paths == [
        os.path.join(imgs, f"test_query/p{p}") for p in ("20_s5.jpg", "21_s6.jpg", "20_s7.jpg")
    ]
    assert t.captions == ["t0", "t1", "t2", "t3"]
    assert t.caption_pids == [20, 20, 21, 20]
    assert t.caption_image_ids == [0, 0, 1, 2]
    assert (t.num_images, t.num_captions, t.num_ids) == (3, 4, 2)
    assert ds.split("val") is ds.val
    with pytest.raises(ValueError, match="unknown split"):
        ds.split("train")


def test_summary_table(tmp_path, caplog):
    _make(tmp_path, _valid_entries())
    ds = CUHKPEDES(root=str(tmp_path), some_fastreid_kwarg=1)
    assert ds.summary_rows() == [["train", 2, 3, 4], ["val", 2, 2, 3], ["test", 2, 3, 4]]
    with caplog.at_level(logging.INFO, logger="fastreid_ext.data.datasets.base"):
        ds.show_summary()
    text = caplog.text
    assert "CUHKPEDES" in text and "# captions" in text
    assert "| train    | 2       | 3          | 4" in text


@pytest.mark.parametrize("fmt,cls", [("cuhk", CUHKPEDES), ("icfg", ICFGPEDES), ("rstp", RSTPReid)])
def test_synthetic_dataset_loads_through_registered_loader(tmp_path, fmt, cls):
    num_ids, ipi = 10, 2
    write_synthetic_dataset(
        str(tmp_path), fmt, num_ids=num_ids, images_per_id=ipi, seed=3, image_size=(32, 16)
    )
    from fastreid.data.datasets import DATASET_REGISTRY

    ds = DATASET_REGISTRY.get(cls.__name__)(root=str(tmp_path))
    n_train, n_val, n_test = split_identity_counts(num_ids, fmt)
    cpi = {"cuhk": 2, "icfg": 1, "rstp": 2}[fmt]
    assert len(ds.train) == n_train * ipi * cpi
    assert (
        sorted({p.pid for p in ds.train}) == list(range(n_train)) and ds.num_train_pids == n_train
    )
    assert sorted({p.image_id for p in ds.train}) == list(range(n_train * ipi))
    assert all(os.path.isfile(p.img_path) for p in ds.train)
    if fmt == "icfg":
        assert ds.val is None
        with pytest.raises(ValueError, match="no 'val' split"):
            ds.split("val")
    else:
        assert (ds.val.num_ids, ds.val.num_images, ds.val.num_captions) == (
            n_val,
            n_val * ipi,
            n_val * ipi * cpi,
        )
    t = ds.test
    assert (t.num_ids, t.num_images, t.num_captions) == (n_test, n_test * ipi, n_test * ipi * cpi)
    # Each query caption points at its own image: compare with the json entries.
    with open(ds.annotation_path) as f:
        test_entries = [e for e in json.load(f) if e["split"] == "test"]
    for pid, caption, g in zip(t.caption_pids, t.captions, t.caption_image_ids):
        assert t.image_pids[g] == pid
        assert caption in test_entries[g]["captions"]
        assert t.img_paths[g].endswith(test_entries[g][cls.image_key])
    # IRRA pid conventions: CUHK ids start at 1 (train pid = id - 1), ICFG/RSTP at 0 (pid = id).
    offset = 1 if fmt == "cuhk" else 0
    assert ds.train_pid_map == {raw: raw - offset for raw in range(offset, offset + n_train)}


def test_icfg_accepts_both_annotation_names(tmp_path):
    entries = [_entry(0, "train", "train/0000/a.jpg"), _entry(1, "test", "test/0000/b.jpg")]
    _make(tmp_path, entries, cls=ICFGPEDES, annotation="ICFG_PEDES.json")
    ds = ICFGPEDES(root=str(tmp_path))
    assert os.path.basename(ds.annotation_path) == "ICFG_PEDES.json"
    _make(tmp_path, entries, cls=ICFGPEDES, annotation="ICFG-PEDES.json")
    assert os.path.basename(ICFGPEDES(root=str(tmp_path)).annotation_path) == "ICFG-PEDES.json"


def test_cuhk_accepts_alternative_annotation_name(tmp_path):
    _make(tmp_path, _valid_entries(), annotation="CUHK-PEDES.json")
    assert CUHKPEDES(root=str(tmp_path)).annotation_path.endswith("CUHK-PEDES.json")


def test_rstp_requires_img_path_key(tmp_path):
    entries = [
        _entry(0, "train", "0000_c1_0001.jpg", key="file_path"),
        _entry(1, "test", "0001_c2_0001.jpg", key="img_path"),
    ]
    _make(tmp_path, entries, cls=RSTPReid, images=False)
    with pytest.raises(
        DatasetFormatError, match=r"data_captions\.json entry 0: missing field 'img_path'"
    ):
        RSTPReid(root=str(tmp_path), verify_images=False)


def _set(i, key, value):
    def mutate(entries):
        entries[i][key] = value
        return entries

    return mutate


def _delete(i, key):
    def mutate(entries):
        del entries[i][key]
        return entries

    return mutate


ERROR_CASES = {
    "entry_not_dict": (lambda e: e[:1] + [["x"]] + e[2:], "entry 1: must be a json object, got list"),
    "missing_id": (_delete(1, "id"), "entry 1: missing field 'id'"),
    "missing_split": (_delete(1, "split"), "entry 1: missing field 'split'"),
    "missing_captions": (_delete(1, "captions"), "entry 1: missing field 'captions'"),
    "missing_path": (_delete(1, "file_path"), "entry 1: missing field 'file_path'"),
    "id_string": (_set(1, "id", "3"), "entry 1: field 'id' must be an integer, got '3'"),
    "id_float": (_set(1, "id", 3.0), "entry 1: field 'id' must be an integer"),
    "id_bool": (_set(1, "id", True), "entry 1: field 'id' must be an integer, got True"),
    "split_int": (_set(1, "split", 0), "entry 1: field 'split' must be a string"),
    "captions_empty": (_set(1, "captions", []), "entry 1: field 'captions' must be a non-empty list of strings, got []"),
    "captions_str": (_set(1, "captions", "a man"), "entry 1: field 'captions' must be a non-empty list"),
    "caption_not_str": (_set(1, "captions", ["ok", 7]), "entry 1: field 'captions' item 1 must be a non-empty string, got 7"),
    "caption_blank": (_set(1, "captions", ["  "]), "entry 1: field 'captions' item 0 must be a non-empty string"),
    "path_int": (_set(1, "file_path", 12), "entry 1: field 'file_path' must be a non-empty string, got 12"),
    "path_empty": (_set(1, "file_path", ""), "entry 1: field 'file_path' must be a non-empty string"),
    "path_absolute": (_set(1, "file_path", "/etc/hostname"), "entry 1: field 'file_path': absolute image path"),
    "path_parent": (_set(1, "file_path", "../reid_raw.json"), "entry 1: field 'file_path': image path '../reid_raw.json' escapes"),
    "path_parent_nested": (_set(1, "file_path", "Market/../../x.jpg"), "entry 1: field 'file_path': image path 'Market/../../x.jpg' escapes"),
    "path_is_folder": (_set(1, "file_path", "Market/.."), "entry 1: field 'file_path': image path 'Market/..' does not name a file"),
    "dup_id_across_splits": (_set(6, "id", 5), "entry 6: id 5 is in split 'test' but entry 0 put it in split 'train'"),
    "dup_id_val_test": (_set(5, "id", 10), "entry 5: id 10 is in split 'test' but entry 4 put it in split 'val'"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_entry_errors_name_file_entry_and_field(tmp_path, case):
    mutate, expected = ERROR_CASES[case]
    d = _make(tmp_path, mutate(_valid_entries()))
    with pytest.raises(DatasetFormatError) as err:
        CUHKPEDES(root=str(tmp_path))
    msg = str(err.value)
    assert msg.startswith(str(d / "reid_raw.json") + " entry "), msg
    assert expected in msg, msg


def test_escaping_path_rejected_even_if_file_exists_and_without_verification(tmp_path):
    entries = _valid_entries()
    entries[2]["file_path"] = "train_query/../../outside.jpg"
    d = _make(tmp_path, entries)
    (d / "outside.jpg").touch()  # exists, but outside imgs/
    for verify in (True, False):
        with pytest.raises(DatasetFormatError, match="entry 2: field 'file_path'.*escapes"):
            CUHKPEDES(root=str(tmp_path), verify_images=verify)


def test_missing_image_reported_with_count(tmp_path):
    d = _make(tmp_path, _valid_entries())
    os.remove(d / "imgs" / "test_query/p21_s6.jpg")
    os.remove(d / "imgs" / "test_query/p20_s7.jpg")
    with pytest.raises(DatasetFormatError) as err:
        CUHKPEDES(root=str(tmp_path))
    msg = str(err.value)
    assert (
        "reid_raw.json entry 6: field 'file_path': image 'test_query/p21_s6.jpg' not found" in msg
    )
    assert "(1 more images are missing)" in msg
    ds = CUHKPEDES(root=str(tmp_path), verify_images=False)  # documented escape hatch
    assert ds.test.num_images == 3


def test_normalised_paths_inside_imgs_are_accepted(tmp_path):
    entries = _valid_entries()
    entries[0]["file_path"] = "./train_query//p5_s1.jpg"
    entries[1]["file_path"] = "Market/sub/../0003_c1s1_000001_00.jpg"
    d = _make(tmp_path, _valid_entries())  # files at the normalised locations
    (d / "reid_raw.json").write_text(json.dumps(entries))
    ds = CUHKPEDES(root=str(tmp_path))
    assert ds.train[0].img_path == str(d / "imgs" / "train_query" / "p5_s1.jpg")
    assert ds.train[2].img_path == str(d / "imgs" / "Market" / "0003_c1s1_000001_00.jpg")


def test_symlinked_image_folder_is_allowed(tmp_path):
    real = tmp_path / "elsewhere"
    d = _make(real, _valid_entries())
    (tmp_path / "root" / "CUHK-PEDES").mkdir(parents=True)
    os.symlink(d / "imgs", tmp_path / "root" / "CUHK-PEDES" / "imgs")
    os.symlink(d / "reid_raw.json", tmp_path / "root" / "CUHK-PEDES" / "reid_raw.json")
    assert CUHKPEDES(root=str(tmp_path / "root")).test.num_images == 3


@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"split": "train"}', "top level must be a json list of image entries, got dict"),
        ('[{"split": "train",', "invalid json at line 1"),
    ],
)
def test_file_level_errors(tmp_path, text, expected):
    d = _make(tmp_path, text)
    with pytest.raises(DatasetFormatError) as err:
        CUHKPEDES(root=str(tmp_path))
    assert str(d / "reid_raw.json") in str(err.value) and expected in str(err.value)


@pytest.mark.parametrize("missing", ["train", "test"])
def test_split_without_entries_is_an_error(tmp_path, missing):
    entries = [e for e in _valid_entries() if e["split"] != missing]
    _make(tmp_path, entries)
    with pytest.raises(
        DatasetFormatError, match=f"reid_raw.json: no entries with split '{missing}'"
    ):
        CUHKPEDES(root=str(tmp_path))


def test_missing_dataset_dir_annotation_and_imgs(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"dataset directory .*RSTPReid' does not exist"):
        RSTPReid(root=str(tmp_path))
    (tmp_path / "ICFG-PEDES").mkdir()
    with pytest.raises(DatasetFormatError) as err:
        ICFGPEDES(root=str(tmp_path))
    assert "tried 'ICFG-PEDES.json', 'ICFG_PEDES.json'" in str(err.value)
    assert str(tmp_path / "ICFG-PEDES") in str(err.value)
    d = _make(tmp_path, _valid_entries())
    os.rename(d / "imgs", d / "images")
    with pytest.raises(DatasetFormatError, match=r"image folder .*imgs' does not exist"):
        CUHKPEDES(root=str(tmp_path))


def test_check_relative_image_path():
    assert check_relative_image_path("a/b.jpg") == "a/b.jpg"
    assert check_relative_image_path("a/./b/../c.jpg") == "a/c.jpg"
    assert check_relative_image_path(".hidden.jpg") == ".hidden.jpg"
    for bad in ("/a.jpg", "..", "../a.jpg", "a/../../b.jpg", ".", "a/.."):
        with pytest.raises(ValueError):
            check_relative_image_path(bad)
