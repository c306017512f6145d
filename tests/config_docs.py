"""Shared check that a method's config keys are all documented (comment and README row)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from fastreid.config import CfgNode


def leaf_keys(node: CfgNode, prefix: str = "") -> Iterator[str]:
    """Dotted names of every leaf key under ``node``."""
    for k, v in node.items():
        if isinstance(v, CfgNode):
            yield from leaf_keys(v, f"{prefix}{k}.")
        else:
            yield prefix + k


def assert_keys_documented(node: CfgNode, method: str, config_py: Path, readme: Path) -> None:
    """Every leaf of ``MODEL.<method>`` is assigned in ``config_py`` right below a comment line,
    and the README's "## Config keys" section has one table row per key (and no other)."""
    keys = sorted(leaf_keys(node))
    lines = config_py.read_text().splitlines()
    assigned = {}
    pattern = re.compile(rf"\s*_C\.MODEL\.{method}\.([A-Z0-9_.]+) = (?!CN\(\))")
    for i, line in enumerate(lines):
        m = pattern.match(line)
        if m:
            assigned[m.group(1)] = lines[i - 1].strip()
    assert sorted(assigned) == keys
    uncommented = [k for k, before in assigned.items() if not before.startswith("#")]
    assert not uncommented, uncommented
    table = readme.read_text().split("## Config keys", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([A-Z0-9_.]+)`", table, flags=re.M))
    assert rows == set(keys)
