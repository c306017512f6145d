"""CPCL (arXiv 2401.10011): weakly supervised text-to-image person ReID with clustering,
prototypical multi-modal memory (PMM), hybrid-level matching (PCM + ICPM) and outlier mining.

Importing this package (``PLUGINS: ["cpcl"]`` in ``configs/CPCL/Base-CPCL.yml``) registers
``add_cpcl_config`` (``MODEL.CPCL``), the meta-architecture ``CPCLT2I``, the trainer
``CPCLTrainer`` and the hook ``CPCLPseudoLabelHook``.
"""

from . import config, hooks, modeling, trainer  # noqa: F401  (registration side effects)
from .config import add_cpcl_config, check_cpcl_config
from .data import CPCLTrainSet, WeakPair, build_weak_pairs
from .hooks import CPCLPseudoLabelHook
from .modeling import CPCLT2I, PrototypicalMultiModalMemory
from .trainer import CPCLTrainer

__all__ = [
    "add_cpcl_config",
    "check_cpcl_config",
    "CPCLTrainSet",
    "WeakPair",
    "build_weak_pairs",
    "CPCLPseudoLabelHook",
    "CPCLT2I",
    "PrototypicalMultiModalMemory",
    "CPCLTrainer",
]
