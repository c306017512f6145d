"""CPCL modules: the HCM losses (PCM, ICPM), the prototypical multi-modal memory (PMM) and the
meta-architecture ``CPCLT2I``."""

from .losses import hcm_losses, icpm_loss, icpm_positives, pcm_loss
from .meta_arch import CPCLT2I
from .pmm import PrototypicalMultiModalMemory, gather_step

__all__ = [
    "hcm_losses",
    "icpm_loss",
    "icpm_positives",
    "pcm_loss",
    "CPCLT2I",
    "PrototypicalMultiModalMemory",
    "gather_step",
]
