"""Text-image ReID losses of IRRA: SDM, identity classification and masked language modelling."""

from .identity import identity_loss
from .mlm import mlm_loss
from .sdm import sdm_loss, similarity_distribution_matching

__all__ = ["identity_loss", "mlm_loss", "sdm_loss", "similarity_distribution_matching"]
