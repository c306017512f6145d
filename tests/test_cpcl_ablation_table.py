"""Every CPCL ablation file changes exactly the keys of its row, written out here by hand (not
read from the files or the code that defines them): a file that silently runs another variant,
or the main recipe, fails."""

from __future__ import annotations

from typing import Any, Dict

import pytest
from fastreid.config import CfgNode

from fastreid_ext.engine import build_cfg

from .conftest import REPO

ABLATIONS = REPO / "configs" / "CPCL" / "ablations"
# file -> {MODEL.CPCL key: value} that differ from configs/CPCL/cuhk.yml
ROWS: Dict[str, Dict[str, Any]] = {
    "icpm_cmpm.yml": {"ICPM.TAU": 0.0},
    "icpm_off.yml": {"ICPM.ENABLED": False},
    "no_memory_update.yml": {"PMM.UPDATE.ENABLED": False},
    "oplm_off.yml": {"OPLM.ENABLED": False},
    "oplm_one_stage.yml": {},  # the main recipe's OPLM, named explicitly
    "oplm_two_stage.yml": {"OPLM.NAME": "two_stage"},
    "pcm_cross.yml": {"PCM.NAME": "cross"},
    "pcm_hybrid.yml": {},  # the main recipe's PCM (Table 4 row "hybrid"), named explicitly
    "pcm_single.yml": {"PCM.NAME": "intra"},
    "pmm_hard.yml": {"PMM.UPDATE.NAME": "hard"},
    "pmm_multi_modal.yml": {"PMM.UPDATE.NAME": "multi_modal"},
}


def _leaves(node: CfgNode, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, CfgNode):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_every_ablation_file_has_a_row():
    assert sorted(p.name for p in ABLATIONS.glob("*.yml")) == sorted(ROWS)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_ablation_changes_exactly_its_row(name):
    main = _leaves(build_cfg(str(REPO / "configs" / "CPCL" / "cuhk.yml")).MODEL.CPCL)
    cfg = build_cfg(str(ABLATIONS / name))
    ablation = _leaves(cfg.MODEL.CPCL)
    diff = {k: v for k, v in ablation.items() if main.get(k) != v}
    assert diff == ROWS[name]
    assert cfg.OUTPUT_DIR == f"output/CPCL/ablations/{name[:-4]}"
