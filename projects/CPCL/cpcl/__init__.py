"""CPCL (arXiv 2401.10011): weakly supervised text-to-image person ReID with clustering,
prototypical multi-modal memory (PMM), hybrid-level matching (PCM + ICPM) and outlier mining.

Importing this package registers ``add_cpcl_config``, the meta-architecture ``CPCLT2I``, the
trainer ``CPCLTrainer`` and the hook ``CPCLPseudoLabelHook``.
"""

from . import config, hook, meta_arch, trainer  # noqa: F401  (registration side effects)
from .config import add_cpcl_config
from .data import CPCLTrainSet, WeakPair, build_weak_pairs
from .hook import CPCLPseudoLabelHook
from .meta_arch import CPCLT2I
from .trainer import CPCLTrainer

__all__ = [
    "add_cpcl_config",
    "CPCLTrainSet",
    "WeakPair",
    "build_weak_pairs",
    "CPCLPseudoLabelHook",
    "CPCLT2I",
    "CPCLTrainer",
]
