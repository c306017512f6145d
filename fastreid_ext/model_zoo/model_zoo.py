"""Finding the shipped configs: in a checkout the repository's ``configs/``, in an installed wheel
the copy that the build placed at ``fastreid_ext/model_zoo/configs/`` (see ``setup.py``).

Names are paths relative to that folder with ``/`` separators (``"Baseline/demo.yml"``), with or
without the ``fastreid_ext://`` prefix.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Dict, List

__all__ = [
    "SCHEME",
    "configs_root",
    "get_config_file",
    "list_configs",
    "resolve_config_path",
    "summarize_configs",
]

# Prefix that marks a shipped config's name in ``--config-file`` and ``_BASE_``.
SCHEME = "fastreid_ext://"
# Where a wheel build copies the repository's configs/ (inside this package).
_PACKAGED = Path(__file__).resolve().parent / "configs"
# The repository's configs/ when fastreid_ext runs from a checkout (editable install, PYTHONPATH).
_CHECKOUT = Path(__file__).resolve().parents[2] / "configs"


def configs_root() -> Path:
    """The folder holding the shipped configs: the packaged copy if this is an installed wheel,
    else the checkout's ``configs/`` (recognised by the ``pyproject.toml`` next to it)."""
    if _PACKAGED.is_dir():
        return _PACKAGED
    if _CHECKOUT.is_dir() and (_CHECKOUT.parent / "pyproject.toml").is_file():
        return _CHECKOUT
    raise FileNotFoundError(
        f"No shipped configs found: neither {_PACKAGED} (installed wheel) nor {_CHECKOUT} "
        "(repository checkout) exists. Reinstall fastreid-ext, or pass a config file path."
    )


def list_configs() -> List[str]:
    """Every shipped config's name (``"CPCL/ablations/pcm_cross.yml"``), sorted."""
    root = configs_root()
    names = (p.relative_to(root).as_posix() for p in root.rglob("*.yml") if p.is_file())
    return sorted(names)


def _strip_scheme(name: str) -> str:
    return name[len(SCHEME) :] if name.startswith(SCHEME) else name


def get_config_file(name: str) -> str:
    """The absolute path of the shipped config ``name`` (``"Propot/cuhk.yml"`` or
    ``"fastreid_ext://Propot/cuhk.yml"``); an error naming the available configs otherwise."""
    rel = _strip_scheme(name).strip().lstrip("/")
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    root = configs_root()
    path = root.joinpath(*parts) if parts else root
    if ".." not in parts and path.is_file():
        return str(path)
    available = list_configs()
    close = difflib.get_close_matches("/".join(parts), available, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise FileNotFoundError(
        f"'{name}' is not a shipped config.{hint} Available in {root} (name them "
        "FOLDER/NAME.yml):\n"
        + "\n".join(f"  {line}" for line in summarize_configs(available, False))
    )


def resolve_config_path(path: str) -> str:
    """``path`` itself, or the absolute path of a ``fastreid_ext://`` name."""
    return get_config_file(path) if path.startswith(SCHEME) else path


def summarize_configs(
    names: List[str] | None = None, collapse_subfolders: bool = True
) -> List[str]:
    """One line per config folder: its runnable configs, then its ``Base-*`` files, e.g.
    ``"CPCL/  cuhk demo icfg rstp (base: Base-CPCL; +11 in ablations/)"``. With
    ``collapse_subfolders=False`` every folder (``CPCL/ablations/``) gets a line of its own."""
    names = list_configs() if names is None else names
    groups: Dict[str, Dict[str, List[str]]] = {}
    for name in names:
        if collapse_subfolders:
            folder, _, rest = name.partition("/") if "/" in name else ("", "", name)
        else:
            folder, _, rest = name.rpartition("/")
        group = groups.setdefault(folder, {"run": [], "base": [], "nested": []})
        if "/" in rest:
            group["nested"].append(rest)
        elif rest.startswith("Base-"):
            group["base"].append(os.path.splitext(rest)[0])
        else:
            group["run"].append(os.path.splitext(rest)[0])
    labels = {folder: f"{folder}/" if folder else "./" for folder in groups}
    width = max(map(len, labels.values()), default=0) + 1
    lines = []
    for folder in sorted(groups):
        group = groups[folder]
        extra = [f"base: {', '.join(group['base'])}"] if group["base"] else []
        sub = sorted({n.split("/", 1)[0] for n in group["nested"]})
        extra += [f"+{len(group['nested'])} in {', '.join(s + '/' for s in sub)}"] if sub else []
        runs = " ".join(group["run"])
        suffix = f"({'; '.join(extra)})" if extra else ""
        lines.append(f"{labels[folder]:<{width}}{' '.join(filter(None, (runs, suffix)))}")
    return lines
