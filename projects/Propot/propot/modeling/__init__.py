"""Propot modules: prototypical prompting (DPP, IPP), aggregation, L_p2i, the meta-architecture."""

from .aggregation import (
    PROTOTYPE_AGGREGATIONS,
    AdaptivePrototypeAggregation,
    LearnedWeightAggregation,
    MeanAggregation,
    MLPWeightAggregation,
    SumAggregation,
    build_prototype_aggregation,
)
from .blocks import PropotAttentionBlock, PropotBlockStack
from .losses import prototype_to_instance_loss
from .meta_arch import PropotT2I
from .prompting import IPP_CALLS, DomainConditionalPrompting, InstanceConditionalPrompting
from .prototypes import PropotPrototypes

__all__ = [
    "PROTOTYPE_AGGREGATIONS",
    "AdaptivePrototypeAggregation",
    "LearnedWeightAggregation",
    "MeanAggregation",
    "MLPWeightAggregation",
    "SumAggregation",
    "build_prototype_aggregation",
    "PropotAttentionBlock",
    "PropotBlockStack",
    "prototype_to_instance_loss",
    "PropotT2I",
    "IPP_CALLS",
    "DomainConditionalPrompting",
    "InstanceConditionalPrompting",
    "PropotPrototypes",
]
