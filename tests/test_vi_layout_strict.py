"""SYSU-MM01 and RegDB layouts are held to the text-image datasets' rules: an identity belongs to
one split, image paths stay inside the dataset folder, listed images exist at start-up, and every
error names the file and the line or identity."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from fastreid_ext.data.datasets import DatasetFormatError, check_relative_image_path
from fastreid_ext.data.vi import (
    RegDBCrossModal,
    SYSUMM01CrossModal,
    VIDatasetError,
    write_synthetic_regdb,
    write_synthetic_sysu,
)

SYSU_LOGGER = "fastreid_ext.data.vi.sysu"


@pytest.fixture
def sysu(tmp_path) -> Path:
    """A small synthetic SYSU-MM01 tree (4 train, 2 val, 2 test identities, every camera)."""
    write_synthetic_sysu(
        str(tmp_path),
        num_ids=8,
        images_per_camera=1,
        seed=0,
        image_size=(32, 16),
        split_counts=(4, 2, 2),
        camera_probability=1.0,
    )
    return tmp_path


@pytest.fixture
def regdb(tmp_path) -> Path:
    """A small synthetic RegDB tree (6 identities, 2 images per modality, trials 1 and 2)."""
    write_synthetic_regdb(
        str(tmp_path), num_ids=6, images_per_modality=2, num_trials=2, seed=0, image_size=(32, 16)
    )
    return tmp_path


def _ids(root: Path, split: str) -> list:
    text = (root / "SYSU-MM01" / "exp" / f"{split}_id.txt").read_text()
    return [int(t) for t in text.strip().split(",")]


def _append_id(root: Path, split: str, pid: int) -> Path:
    path = root / "SYSU-MM01" / "exp" / f"{split}_id.txt"
    path.write_text(path.read_text().strip() + f",{pid}\n")
    return path


def _idx(root: Path, split: str, name: str, trial: int = 1) -> Path:
    return root / "RegDB" / "idx" / f"{split}_{name}_{trial}.txt"


# ---------------------------------------------------------------------------------- shared rules
def test_one_source_of_truth_for_errors_and_paths():
    """The VI readers raise the text-image datasets' error type and normalise paths with the same
    function, which names the folder the path is relative to."""
    from fastreid_ext.data import validation

    assert issubclass(VIDatasetError, DatasetFormatError)
    assert check_relative_image_path is validation.check_relative_image_path
    assert check_relative_image_path("Visible/./5/../5/a.bmp", "RegDB/") == "Visible/5/a.bmp"
    with pytest.raises(ValueError, match=r"'Visible/\.\./\.\./x' escapes the dataset's RegDB/"):
        check_relative_image_path("Visible/../../x", "RegDB/")
    with pytest.raises(ValueError, match="escapes the dataset's imgs/ folder"):
        check_relative_image_path("a/../../x.jpg")  # the text-image default


# ---------------------------------------------------------------------------------- SYSU-MM01
@pytest.mark.parametrize(
    "source,target,leak",
    [("test", "train", True), ("test", "val", True), ("train", "val", False)],
)
def test_sysu_identity_in_two_id_files_is_an_error(sysu, source, target, leak):
    """A test identity also listed for training leaks the test set; any identity listed in two
    id files is an error naming both files, their lines and the identity."""
    SYSUMM01CrossModal(str(sysu))  # the synthetic layout is valid
    pid = _ids(sysu, source)[0]
    _append_id(sysu, target, pid)
    exp = sysu / "SYSU-MM01" / "exp"
    later, earlier = (source, target) if source == "test" else (target, source)
    with pytest.raises(VIDatasetError) as err:
        SYSUMM01CrossModal(str(sysu))
    msg = str(err.value)
    assert msg.startswith(
        f"{exp / f'{later}_id.txt'} line 1: identity {pid} is also listed in "
        f"{exp / f'{earlier}_id.txt'} line 1"
    ), msg
    assert msg.endswith("(train/test leak)") == leak, msg


def test_sysu_bad_token_names_file_and_line(sysu):
    path = sysu / "SYSU-MM01" / "exp" / "val_id.txt"
    path.write_text(path.read_text() + "\n12,x7\n")
    with pytest.raises(VIDatasetError) as err:
        SYSUMM01CrossModal(str(sysu))
    assert str(err.value) == f"{path} line 3: 'x7' is not a non-negative integer identity"


def test_sysu_test_identity_without_images_is_logged(sysu, caplog):
    with caplog.at_level(logging.WARNING, logger=SYSU_LOGGER):
        SYSUMM01CrossModal(str(sysu))
    assert not caplog.records  # the synthetic layout has every test identity in both modalities
    test_file = _append_id(sysu, "test", 999)  # no folder in any camera
    with caplog.at_level(logging.WARNING, logger=SYSU_LOGGER):
        d = SYSUMM01CrossModal(str(sysu))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages
    assert f"1 test identities of {test_file} have no image in cam1..cam6" in messages[0]
    assert messages[0].endswith("[999]")
    assert 999 not in {x.pid for x in d.query()}


@pytest.mark.parametrize(
    "cams,expected", [((3, 6), "no infrared (cam3/cam6) image"), ((1, 2, 4, 5), "no visible")]
)
def test_sysu_test_identity_missing_a_modality_is_logged(sysu, caplog, cams, expected):
    pid = _ids(sysu, "test")[0]
    for cam in cams:
        folder = sysu / "SYSU-MM01" / f"cam{cam}" / f"{pid:04d}"
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    with caplog.at_level(logging.WARNING, logger=SYSU_LOGGER):
        SYSUMM01CrossModal(str(sysu))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and expected in messages[0], messages
    assert messages[0].endswith(f"[{pid}]") and "test_id.txt" in messages[0]


# ---------------------------------------------------------------------------------- RegDB
@pytest.mark.parametrize(
    "bad,expected",
    [
        ("Visible/../../x.bmp", "image path 'Visible/../../x.bmp' escapes the dataset's RegDB/"),
        ("Visible/1/../../../x.bmp", "escapes the dataset's RegDB/ folder"),
        ("../x.bmp", "image path '../x.bmp' escapes the dataset's RegDB/ folder"),
        ("/tmp/x.bmp", "absolute image path '/tmp/x.bmp' is not allowed"),
        ("Visible/..", "image path 'Visible/..' does not name a file"),
    ],
)
def test_regdb_path_leaving_the_dataset_folder_is_an_error(regdb, bad, expected):
    (regdb / "x.bmp").write_bytes(b"")  # exists, but outside RegDB/
    path = _idx(regdb, "train", "visible")
    lines = path.read_text().splitlines()
    lines[2] = f"{bad} {lines[2].split()[1]}"
    path.write_text("\n".join(lines) + "\n")
    for verify in (True, False):
        with pytest.raises(VIDatasetError) as err:
            RegDBCrossModal(str(regdb), trial=1, verify_images=verify)
        msg = str(err.value)
        assert msg.startswith(f"{path} line 3: "), msg
        assert expected in msg, msg


def test_regdb_paths_are_normalised_inside_the_dataset_folder(regdb):
    path = _idx(regdb, "test", "thermal")
    lines = path.read_text().splitlines()
    rel, label = lines[0].split()
    folder, pid, name = rel.split("/")
    lines[0] = f"./{folder}//{pid}/../{pid}/{name} {label}"
    path.write_text("\n".join(lines) + "\n")
    d = RegDBCrossModal(str(regdb), trial=1)
    assert d.test_thermal[0].img_path == os.path.join(str(regdb), "RegDB", rel)


@pytest.mark.parametrize("name", ["visible", "thermal"])
def test_regdb_train_test_identity_overlap_is_an_error(regdb, name):
    """A training person's image listed in a test file (either modality) is an error naming the
    test line and the person's first training line (the visible training file is read first)."""
    for trial in (1, 2):  # the synthetic trials are valid
        RegDBCrossModal(str(regdb), trial=trial)
    test_path = _idx(regdb, "test", name)
    train_rel = _idx(regdb, "train", name).read_text().splitlines()[3].split()[0]
    person = train_rel.split("/")[1]
    train_visible = _idx(regdb, "train", "visible")
    first = next(
        (i, line.split()[0])
        for i, line in enumerate(train_visible.read_text().splitlines(), 1)
        if line.split()[0].split("/")[1] == person
    )
    test_lines = test_path.read_text().splitlines()
    test_lines.append(f"{train_rel} {test_lines[0].split()[1]}")  # with a test label
    test_path.write_text("\n".join(test_lines) + "\n")
    with pytest.raises(VIDatasetError) as err:
        RegDBCrossModal(str(regdb), trial=1)
    assert str(err.value) == (
        f"{test_path} line {len(test_lines)}: identity '{person}' (image '{train_rel}') is also "
        f"in {train_visible} line {first[0]} (image '{first[1]}'); the test and train identities "
        "of a trial must differ (train/test leak)"
    )


def test_regdb_missing_images_are_reported_at_start_up(regdb):
    path = _idx(regdb, "test", "thermal")
    lines = path.read_text().splitlines()
    for line in (lines[3], lines[1]):
        os.remove(regdb / "RegDB" / line.split()[0])
    with pytest.raises(VIDatasetError) as err:
        RegDBCrossModal(str(regdb), trial=1)
    rel = lines[1].split()[0]
    assert str(err.value) == (
        f"{path} line 2: image '{rel}' not found under {regdb / 'RegDB'} "
        "(1 more images are missing)"
    )
    d = RegDBCrossModal(str(regdb), trial=1, verify_images=False)  # documented escape hatch
    assert len(d.test_thermal) == len(lines)
