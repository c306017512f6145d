"""CSDN modules: two-stream image encoder and heads, MsPL prompt learners, SII fusion, the
losses, and the ``CSDN`` meta-architecture."""

from .encoder import BNClassifierHead, GeneralizedMeanPooling, TwoStreamImageEncoder, VisualOutputs
from .fusion import SemanticInformationIntegration
from .losses import euclidean_distances, msel_loss, supcon_loss, wrt_triplet_loss
from .meta_arch import CSDN, PHASES
from .prompt import IdentityPromptLearner

__all__ = [
    "BNClassifierHead",
    "GeneralizedMeanPooling",
    "TwoStreamImageEncoder",
    "VisualOutputs",
    "SemanticInformationIntegration",
    "euclidean_distances",
    "msel_loss",
    "supcon_loss",
    "wrt_triplet_loss",
    "CSDN",
    "PHASES",
    "IdentityPromptLearner",
]
