"""CSDN (Yu et al., TMM 2025): CLIP-driven semantic discovery for visible-infrared ReID.

Importing registers the config keys (``add_csdn_config``), the meta-architecture ``CSDN``, the
trainer ``CSDNPhasedTrainer`` and the shared visible-infrared components it uses (datasets
``SYSUMM01CrossModal`` / ``RegDBCrossModal``, CAJ transforms, ``VIReIDEvaluator``).
"""

import fastreid_ext.data.vi  # noqa: F401  (VI datasets, transforms, config keys)
import fastreid_ext.evaluation.vi_evaluator  # noqa: F401  (VIReIDEvaluator)

from . import config, model, trainer  # noqa: F401  (registration)
from .config import add_csdn_config
from .fusion import SemanticInformationIntegration
from .model import CSDN
from .prompt import IdentityPromptLearner
from .trainer import CSDNPhasedTrainer

__all__ = [
    "add_csdn_config",
    "CSDN",
    "CSDNPhasedTrainer",
    "IdentityPromptLearner",
    "SemanticInformationIntegration",
]
