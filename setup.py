"""Build hook: ship the repository's ``configs/`` inside the wheel.

``configs/`` at the repository root stays the single source of the configs. When a wheel is built,
the ``build_py`` step copies every ``configs/**/*.yml`` into ``fastreid_ext/model_zoo/configs/``,
where :func:`fastreid_ext.model_zoo.get_config_file` finds them in an installed package. An
editable install reads the checkout's ``configs/`` directly and copies nothing. Everything else is
declared in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# The configs folder next to this file (the repository root, or an unpacked sdist).
CONFIGS = Path(__file__).resolve().parent / "configs"
# Where the configs go inside the built package.
PACKAGED = Path("fastreid_ext", "model_zoo", "configs")


class BuildPyWithConfigs(build_py):
    """``build_py`` that also copies ``configs/`` into the package (not in editable mode)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        files = sorted(CONFIGS.rglob("*.yml"))
        if not files:
            raise FileNotFoundError(f"no configs to ship: {CONFIGS} holds no *.yml files")
        target = Path(self.build_lib) / PACKAGED
        if target.exists():
            shutil.rmtree(target)
        for src in files:
            dst = target / src.relative_to(CONFIGS)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)


setup(cmdclass={"build_py": BuildPyWithConfigs})
