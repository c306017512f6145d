"""The package as people install it: sdist -> wheel -> a fresh virtual environment -> the console
scripts, run from a folder outside the checkout.

Nothing is downloaded: the fresh environment sees the dependencies of this one through a folder of
links to its site-packages entries (without fastreid_ext's editable-install files), so the test
checks our packaging, not the package index. It asserts that fastreid_ext and the method
packages are imported from the fresh environment, that the shipped configs resolve there by name,
that a one-epoch demo trains through ``fastreid-ext-train``, and that without fast-reid the
console script names the ``--no-deps`` install command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest

from fastreid_ext.version import __version__

from .conftest import REPO

pytestmark = pytest.mark.slow

# What a checkout holds besides the sources: at its top level, and anywhere in it.
_NOT_SOURCES_TOP = (".git", ".venv", "output*", "datasets", "build", "dist")
_NOT_SOURCES = ("*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "*.pyc")
# site-packages entries of this environment that belong to the editable install of the checkout
_EDITABLE = ("__editable__", "fastreid_ext")
_METHODS = ("fastreid_ext", "propot", "cpcl", "csdn")


def _run(cmd: List[str], cwd: Path, env: Dict[str, str], timeout: float = 600):
    proc = subprocess.run(
        cmd, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc


def _check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (
        f"{proc.args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


def _build_wheel(work: Path, env: Dict[str, str]) -> Path:
    """sdist of a copy of the checkout, then a wheel from the sdist (as ``python -m build``)."""
    src = work / "src"
    top, anywhere = shutil.ignore_patterns(*_NOT_SOURCES_TOP), shutil.ignore_patterns(*_NOT_SOURCES)

    def ignore(folder: str, names: List[str]) -> set:
        return anywhere(folder, names) | (top(folder, names) if Path(folder) == REPO else set())

    shutil.copytree(REPO, src, ignore=ignore)
    build_sdist = "from setuptools import build_meta as b; print(b.build_sdist('../sdist'))"
    name = _check(_run([sys.executable, "-c", build_sdist], src, env)).stdout.split()[-1]
    sdist = work / "sdist" / name
    with tarfile.open(sdist) as tar:
        assert any(m.endswith("/configs/Baseline/demo.yml") for m in tar.getnames())
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    _check(_run([*pip_wheel, "-w", str(work / "wheel"), str(sdist)], work, env))
    (wheel,) = (work / "wheel").glob("fastreid_ext-*.whl")
    return wheel


def _link_dependencies(deps: Path, with_fastreid: bool) -> None:
    """``deps/``: a link to every entry of this environment's site-packages except the editable
    install of fastreid_ext (and, if asked, except fast-reid)."""
    site = Path(sysconfig.get_paths()["purelib"])
    if deps.exists():
        shutil.rmtree(deps)
    deps.mkdir()
    for entry in site.iterdir():
        name = entry.name
        if name.startswith(_EDITABLE) or name.endswith(".pth"):
            continue
        if not with_fastreid and (name == "fastreid" or name.startswith("fastreid-")):
            continue
        (deps / name).symlink_to(entry)


def _fresh_env(work: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env["PATH"] = os.pathsep.join([str(work / "venv" / "bin"), env.get("PATH", "")])
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Dict[str, Path]:
    """The wheel installed (``pip install --no-deps``) into a fresh venv whose dependencies are
    links to this environment's; returns the paths and timings."""
    work = tmp_path_factory.mktemp("wheel")
    env = _fresh_env(work)
    wheel = _build_wheel(work, env)
    venv = work / "venv"
    _check(_run([sys.executable, "-m", "venv", "--without-pip", str(venv)], work, env))
    python = venv / "bin" / "python"
    purelib = _check(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            work,
            env,
        )
    ).stdout.strip()
    (Path(purelib) / "fastreid_ext_test_deps.pth").write_text(str(work / "deps") + "\n")
    start = time.perf_counter()
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    _check(_run([*install, str(wheel)], work, env))
    install_s = time.perf_counter() - start
    print(f"wheel {wheel.name}: {wheel.stat().st_size / 2**20:.2f} MiB, install {install_s:.1f} s")
    return {"work": work, "wheel": wheel, "venv": venv, "purelib": Path(purelib), "env": env}


def test_wheel_holds_the_packages_configs_and_metadata(installed):
    with zipfile.ZipFile(installed["wheel"]) as whl:
        names = set(whl.namelist())
        dist_info = f"fastreid_ext-{__version__}.dist-info"
        metadata = whl.read(f"{dist_info}/METADATA").decode()
        entry_points = whl.read(f"{dist_info}/entry_points.txt").decode()
    for package in _METHODS:
        assert f"{package}/__init__.py" in names
    shipped = {n.split("model_zoo/configs/", 1)[1] for n in names if "model_zoo/configs/" in n}
    in_checkout = {
        p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yml")
    }
    assert shipped == in_checkout and "Propot/ablations/table4_7_full.yml" in shipped
    assert f"{dist_info}/licenses/LICENSE" in names and "License-Expression: Apache-2.0" in metadata
    assert f"Version: {__version__}" in metadata
    requires = [
        line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist")
    ]
    assert any(r.startswith("torch") for r in requires) and any(
        r.startswith("faiss-cpu") for r in requires
    )
    assert not any(r.startswith("fastreid") and not r.startswith("fastreid-ext") for r in requires)
    assert "fastreid-ext-train = fastreid_ext.tools.train_net:main" in entry_points
    assert "fastreid_ext.plugins" not in entry_points  # methods load through PLUGINS, not here


def test_console_script_without_fastreid_names_the_no_deps_install(installed):
    work, env = installed["work"], installed["env"]
    _link_dependencies(work / "deps", with_fastreid=False)
    proc = _run(["fastreid-ext-train", "--help"], work, env, timeout=300)
    assert proc.returncode != 0
    assert "fast-reid 1.4.0" in proc.stderr and "not installed" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].strip() == "pip install --no-deps fastreid==1.4.0"


def test_one_epoch_demo_through_the_console_scripts(installed):
    work, env, purelib = installed["work"], installed["env"], installed["purelib"]
    _link_dependencies(work / "deps", with_fastreid=True)
    run_dir = work / "run"  # outside the checkout: nothing can come from it
    run_dir.mkdir()
    where = "import fastreid_ext, propot, cpcl, csdn, fastreid_ext.model_zoo as z; " + (
        "print(*[m.__file__ for m in (fastreid_ext, propot, cpcl, csdn)], z.configs_root(), sep='\\n')"
    )
    files = _check(_run([str(installed["venv"] / "bin" / "python"), "-c", where], run_dir, env))
    for path in files.stdout.split():
        assert Path(path).is_relative_to(purelib), path
    help_text = _check(_run(["fastreid-ext-train", "--help"], run_dir, env, timeout=300)).stdout
    assert "fastreid_ext://" in help_text and "Propot/   cuhk demo icfg rstp" in help_text
    _check(
        _run(
            [
                "fastreid-ext-make-synthetic-data",
                "--format",
                "cuhk",
                "--root",
                "data",
                "--num-ids",
                "24",
                "--images-per-id",
                "2",
                "--split-counts",
                "16",
                "2",
                "6",
                "--height",
                "64",
                "--width",
                "32",
            ],
            run_dir,
            env,
            timeout=300,
        )
    )
    opts = [
        "DATASETS.ROOT",
        "data",
        "OUTPUT_DIR",
        "out",
        "SOLVER.MAX_EPOCH",
        "1",
        "SOLVER.IMS_PER_BATCH",
        "16",
        "SOLVER.WARMUP_EPOCHS",
        "1.0",
        "TEST.EVAL_PERIOD",
        "1",
        "DATALOADER.NUM_WORKERS",
        "0",
    ]
    train = ["fastreid-ext-train", "--config-file", "fastreid_ext://Baseline/demo.yml", *opts]
    _check(_run(train, run_dir, env, timeout=900))
    results = json.loads((run_dir / "out" / "results.json").read_text())
    # one evaluation (epoch 0): it is the best one, and its metric is the t2i R1
    assert results["best"]["epoch"] == 0 and results["metric"] == results["R1"]
    assert results["best"]["metric"] == pytest.approx(results["metric"])
    run_info = json.loads((run_dir / "out" / "run_info.json").read_text())
    assert Path(run_info["config_file"]).is_relative_to(purelib / "fastreid_ext" / "model_zoo")
    assert run_info["status"] == "completed"
