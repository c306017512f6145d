"""CSDN (Yu et al., TMM 2025): CLIP-driven semantic discovery for visible-infrared ReID.

Importing registers the config keys (``add_csdn_config``), the meta-architecture ``CSDN``, the
trainer ``CSDNPhasedTrainer`` and the shared visible-infrared components it uses (datasets
``SYSUMM01CrossModal`` / ``RegDBCrossModal``, CAJ transforms, ``VIReIDEvaluator``).
"""

import fastreid_ext  # noqa: F401  (fast-reid compatibility fixes first)
import fastreid_ext.data.vi  # noqa: F401  (VI datasets, transforms, config keys)
import fastreid_ext.evaluation.vi_evaluator  # noqa: F401  (VIReIDEvaluator)

from . import config, modeling, trainer  # noqa: F401  (registration)
from .config import add_csdn_config, check_csdn_config
from .hooks import CSDNPhaseHook
from .modeling import (
    CSDN,
    PHASES,
    IdentityPromptLearner,
    SemanticInformationIntegration,
    TwoStreamImageEncoder,
)
from .phases import PhasePlan, PhaseSchedule, build_phase_optimizer
from .trainer import CSDNPhasedTrainer

__all__ = [
    "add_csdn_config",
    "check_csdn_config",
    "CSDN",
    "PHASES",
    "CSDNPhaseHook",
    "CSDNPhasedTrainer",
    "IdentityPromptLearner",
    "PhasePlan",
    "PhaseSchedule",
    "SemanticInformationIntegration",
    "TwoStreamImageEncoder",
    "build_phase_optimizer",
]
