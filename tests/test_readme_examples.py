"""The documentation's code, run as written in a folder outside the repository.

The fenced code blocks of the README's "Add your own method" section and of
docs/custom_dataset.md are extracted; a block whose first line is a comment naming a file
(``# mylab/mymethod.py``) is that file. The files are written into a temporary folder, the
documented shell commands run there with this environment's ``python`` and console scripts
(``fastreid-ext-train``, ``fastreid-ext-make-synthetic-data``), and what they produce is checked:
the example method trains and its config keys change the loss by the documented formula, the
custom dataset loads through the training loaders and reports format errors as documented.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from .conftest import REPO

pytestmark = pytest.mark.slow

README = REPO / "README.md"
CUSTOM_DATASET = REPO / "docs" / "custom_dataset.md"
EXAMPLE = REPO / "examples" / "mylab"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.M | re.S)
FILE_MARKER = re.compile(r"# ([\w./-]+\.(?:py|ya?ml|toml))\n")
# the example config's values (MODEL.MYMETHOD.WEIGHT / WARMUP_EPOCHS)
WEIGHT, WARMUP_EPOCHS = 0.5, 5


# ---------------------------------------------------------------------------- Markdown helpers
def section(markdown: str, heading: str) -> str:
    """The text of the ``## heading`` section (up to the next ``## `` heading)."""
    start = markdown.index(f"\n## {heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end >= 0 else len(markdown)]


def code_blocks(markdown: str) -> List[Tuple[str, str]]:
    """``(language, body)`` of every fenced code block, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(markdown)]


def file_blocks(markdown: str) -> Dict[str, str]:
    """``{relative path: content}`` of the blocks whose first line names a file."""
    files = {}
    for _, body in code_blocks(markdown):
        marker = FILE_MARKER.match(body)
        if marker:
            files[marker.group(1)] = body
    return files


def shell_block(markdown: str, needle: str) -> str:
    """The one ``bash`` block containing ``needle``."""
    found = [body for lang, body in code_blocks(markdown) if lang == "bash" and needle in body]
    assert len(found) == 1, f"expected one bash block with {needle!r}, found {len(found)}"
    return found[0]


def write_files(folder: Path, files: Dict[str, str]) -> None:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def run_shell(folder: Path, script: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run documented commands with bash in ``folder``, this environment's ``bin`` first on the
    PATH (``python``, the console scripts); the commands' own exports (PYTHONPATH) apply."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        OMP_NUM_THREADS="1",
        PYTHONHASHSEED="0",
    )
    text = "set -euo pipefail\n" + script
    proc = subprocess.run(
        ["bash", "-c", text], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{script}\nfailed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def with_overrides(script: str, command: str, overrides: Sequence[str]) -> str:
    """``script`` (continuation lines joined) with ``overrides`` appended to the line that runs
    ``command``; the other lines unchanged."""
    lines = script.replace("\\\n", " ").splitlines()
    hits = [i for i, line in enumerate(lines) if command in line and not line.startswith("#")]
    assert len(hits) == 1 and "#" not in lines[hits[0]], lines
    lines[hits[0]] += " " + " ".join(overrides)
    return "\n".join(lines) + "\n"


def outside_repo(path: Path) -> Path:
    assert REPO not in path.resolve().parents, path
    return path


# ---------------------------------------------------------------------------- the README example
@pytest.fixture(scope="module")
def readme_section() -> str:
    return section(README.read_text(), "Add your own method")


@pytest.fixture(scope="module")
def mylab_project(readme_section, tmp_path_factory) -> Path:
    """The README's files in a fresh folder outside the repository, plus the empty
    ``mylab/__init__.py`` the text asks for."""
    folder = outside_repo(tmp_path_factory.mktemp("mylab-project"))
    write_files(folder, file_blocks(readme_section))
    (folder / "mylab" / "__init__.py").write_text("")
    return folder


def test_example_package_is_the_readme_text(readme_section):
    """examples/mylab holds exactly the README's files: they cannot drift apart."""
    files = file_blocks(readme_section)
    assert set(files) == {"mylab/mymethod.py", "configs/mymethod_demo.yml", "pyproject.toml"}
    for rel, content in files.items():
        assert (EXAMPLE / rel).read_text() == content, f"examples/mylab/{rel} != README"
    assert (EXAMPLE / "mylab" / "__init__.py").read_text() == ""
    config = yaml.safe_load(files["configs/mymethod_demo.yml"])
    assert config["_BASE_"] == "fastreid_ext://Baseline/demo.yml"
    assert config["PLUGINS"] == ["mylab.mymethod"]
    assert config["MODEL"]["MYMETHOD"] == {"WEIGHT": WEIGHT, "WARMUP_EPOCHS": WARMUP_EPOCHS}


@pytest.fixture(scope="module")
def trained(readme_section, mylab_project) -> Dict[str, Path]:
    """The README's commands, one epoch each: as written (WEIGHT 0.5), then with the loss off."""
    script = shell_block(readme_section, "fastreid-ext-train")
    run_shell(mylab_project, with_overrides(script, "fastreid-ext-train", ["SOLVER.MAX_EPOCH 1"]))
    without_data = "\n".join(
        line
        for line in script.replace("\\\n", " ").splitlines()
        if "fastreid-ext-make-synthetic-data" not in line
    )
    overrides = ["SOLVER.MAX_EPOCH 1", "MODEL.MYMETHOD.WEIGHT 0.0", "OUTPUT_DIR output/weight0"]
    run_shell(mylab_project, with_overrides(without_data, "fastreid-ext-train", overrides))
    return {
        "on": mylab_project / "output" / "mymethod_demo",
        "off": mylab_project / "output" / "weight0",
    }


def _loss_rows(output: Path) -> List[dict]:
    rows = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    return [r for r in rows if "loss_align" in r]


def _final_weights(output: Path) -> Dict[str, torch.Tensor]:
    return torch.load(output / "model_final.pth", map_location="cpu", weights_only=True)["model"]


def test_readme_method_trains_on_the_demo_data(trained):
    on = trained["on"]
    dumped = yaml.safe_load((on / "config.yaml").read_text())
    assert dumped["MODEL"]["META_ARCHITECTURE"] == "MyMethod"
    assert dumped["MODEL"]["MYMETHOD"]["WEIGHT"] == WEIGHT
    assert list(dumped["DATASETS"]["NAMES"]) == ["CUHKPEDES"]  # the demo's data, not Market1501
    assert dumped["MODEL"]["T2I"]["LOSSES"] == ["SDM", "ID"]  # no MLM head on the CPU
    results = json.loads((on / "results.json").read_text())
    # one evaluation (epoch 0): it is the best one, and its metric is the t2i R1
    assert results["best"]["epoch"] == 0 and results["metric"] == results["R1"]
    assert results["best"]["metric"] == pytest.approx(results["metric"])
    rows = _loss_rows(on)
    assert rows and all({"loss_sdm", "loss_id", "loss_align"} <= r.keys() for r in rows)


def test_readme_config_key_changes_the_loss(trained):
    """WEIGHT 0.5 with the warm-up ramp 1/5 in epoch 0: 0 < loss_align <= 0.5 * 0.2 * 2 (as
    1 - cos <= 2); WEIGHT 0: loss_align is 0 and training ends elsewhere."""
    on, off = _loss_rows(trained["on"]), _loss_rows(trained["off"])
    bound = WEIGHT / WARMUP_EPOCHS * 2.0
    assert all(0.0 < r["loss_align"] <= bound for r in on), on
    assert all(r["loss_align"] == 0.0 for r in off), off
    a, b = _final_weights(trained["on"]), _final_weights(trained["off"])
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)


FORMULA_CHECK = """
import json, sys
from types import SimpleNamespace

import torch
from fastreid_ext.config import ConfigValueError
from fastreid_ext.engine import build_cfg
from fastreid_ext.registry import HOOK_REGISTRY
from fastreid_ext.text.tokenizer import ClipTokenizer
from fastreid.modeling.meta_arch import build_model

opts = ["MODEL.HEADS.NUM_CLASSES", "4"]
cfg = build_cfg("configs/mymethod_demo.yml", opts)
torch.manual_seed(0)
model = build_model(cfg).train()
tok = ClipTokenizer(cfg.MODEL.CLIP.CONTEXT_LENGTH)
captions = ["a man in a red coat", "a woman in blue", "a child with a bag", "a man in black"]
batch = {
    "images": torch.rand(4, 3, 64, 32) * 255,
    "caption_ids": torch.stack([tok.encode(c) for c in captions]),
    "targets": torch.arange(4),
}
hook = HOOK_REGISTRY.get("AlignWarmupHook")(cfg, None)
hook.trainer = SimpleNamespace(model=model, epoch=1)
hook.before_epoch()
with torch.no_grad():
    feats = model.extract(batch)
    out = model.losses(feats, batch)
try:
    build_model(build_cfg("configs/mymethod_demo.yml", opts + ["MODEL.MYMETHOD.WEIGHT", "-1.0"]))
    error = ""
except ConfigValueError as exc:
    error = str(exc)
json.dump({
    "ramp": model.ramp,
    "loss_align": float(out["loss_align"]),
    "image": feats["image"].global_feat.double().tolist(),
    "text": feats["text"].global_feat.double().tolist(),
    "losses": sorted(out),
    "error": error,
}, sys.stdout)
"""


def test_readme_loss_follows_its_formula(mylab_project):
    """loss_align = WEIGHT * ramp * mean_i (1 - cos(v_i, t_i)), ramp = (epoch + 1) / 5 from the
    hook; a negative weight is refused naming its key."""
    env = dict(os.environ, PYTHONPATH=str(mylab_project), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", FORMULA_CHECK],
        cwd=mylab_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout)
    assert got["ramp"] == pytest.approx(2 / WARMUP_EPOCHS)
    v, t = np.array(got["image"]), np.array(got["text"])
    cos = (v * t).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(t, axis=1)
    expected = WEIGHT * (2 / WARMUP_EPOCHS) * (1.0 - cos).mean()
    assert got["loss_align"] == pytest.approx(expected, rel=1e-5)
    assert got["losses"] == ["loss_align", "loss_id", "loss_sdm"]
    assert got["error"].startswith("MODEL.MYMETHOD.WEIGHT = -1.0 is not valid")


def test_readme_pyproject_builds_the_package(mylab_project, tmp_path):
    """``pip install -e .`` works with the README's pyproject.toml: it builds a wheel holding
    the ``mylab`` package (offline, with the installed setuptools)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-w", str(tmp_path), "."],
        cwd=mylab_project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("mylab-0.1.0-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"mylab/__init__.py", "mylab/mymethod.py"} <= names


# ---------------------------------------------------------------------------- custom dataset
# person id -> (split, number of images); two captions per image
PEOPLE = {
    1: ("train", 2),
    2: ("train", 2),
    3: ("train", 1),
    4: ("test", 2),
    5: ("test", 1),
    6: ("val", 1),
}


def _write_labels(dataset_dir: Path) -> None:
    """A tiny dataset in the documented table format: images/ and labels.csv."""
    rows = ["image,person_id,split,caption"]
    for pid, (split, count) in PEOPLE.items():
        for k in range(count):
            rel = f"cam{k + 1}/{pid:04d}_{k}.jpg"
            path = dataset_dir / "images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 64), (40 * pid, 20 * k, 100)).save(path)
            rows += [f'{rel},{pid},{split},"person {pid}, view {k}, caption {c}"' for c in (0, 1)]
    (dataset_dir / "labels.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def dataset_project(tmp_path_factory) -> Tuple[Path, str]:
    """docs/custom_dataset.md's files and a tiny dataset; returns (folder, the check commands)."""
    doc = CUSTOM_DATASET.read_text()
    folder = outside_repo(tmp_path_factory.mktemp("dataset-project"))
    files = file_blocks(doc)
    assert set(files) == {
        "make_annotations.py",
        "mylab/mypedes.py",
        "configs/mypedes.yml",
        "check_dataset.py",
    }
    write_files(folder, files)
    (folder / "mylab" / "__init__.py").write_text("")
    _write_labels(folder / "datasets" / "MyPedes")
    return folder, shell_block(doc, "check_dataset.py")


def test_custom_dataset_loads_through_the_training_loaders(dataset_project):
    folder, commands = dataset_project
    out = run_shell(folder, commands).stdout
    entries = json.loads((folder / "datasets" / "MyPedes" / "annotations.json").read_text())
    assert len(entries) == sum(n for _, n in PEOPLE.values())
    assert all(len(e["captions"]) == 2 and set(e) == {"id", "split", "file_path", "captions"}
               for e in entries)  # fmt: skip
    assert f"wrote {len(entries)} images to" in out
    # ids / images / captions per split, as the loader counts them
    assert "MyPedes train: 3 ids, 5 images, 10 captions" in out
    assert "MyPedes val: 1 ids, 1 images, 2 captions" in out
    assert "MyPedes test: 2 ids, 3 images, 6 captions" in out
    # one training sample: the config's 384x128 transform and CLIP's 77 tokens
    assert "first sample: (3, 384, 128) (77,)" in out


def test_custom_dataset_errors_are_the_documented_ones(dataset_project):
    """Two rows of the documented error table, produced by check_dataset.py."""
    folder, commands = dataset_project
    run_shell(folder, commands)
    annotations = folder / "datasets" / "MyPedes" / "annotations.json"
    entries = json.loads(annotations.read_text())
    doc = CUSTOM_DATASET.read_text()
    check = "export PYTHONPATH=$PWD\npython check_dataset.py configs/mypedes.yml"
    try:
        moved = dict(entries[-1], id=entries[0]["id"])  # a training person in the val split
        annotations.write_text(json.dumps([*entries[:-1], moved]))
        with pytest.raises(AssertionError) as failure:
            run_shell(folder, check)
        message = f"id {entries[0]['id']} is in split 'val' but entry 0 put it in split 'train'"
        assert message in str(failure.value)
        assert "is in split 'test' but entry 2 put it in split 'train'" in doc
        annotations.write_text(json.dumps([dict(entries[0], id=str(entries[0]["id"]))]))
        with pytest.raises(AssertionError) as failure:
            run_shell(folder, check)
        assert "entry 0: field 'id' must be an integer" in str(failure.value)
        assert "entry 7: field 'id' must be an integer" in doc
    finally:
        annotations.write_text(json.dumps(entries))
