"""Propot (Yan et al., ACM MM 2024): prototypical prompting for text-to-image person ReID.

Importing registers the config keys (``add_propot_config``, all under ``MODEL.PROPOT``), the
meta-architecture ``PropotT2I`` and the hook ``PropotInitialPrototypeHook``. Configs name this
package in ``PLUGINS`` (configs/Propot/Base-Propot.yml does).
"""

import fastreid_ext  # noqa: F401  (fast-reid compatibility fixes first)

from . import config, hooks  # noqa: F401  (registration)
from .config import add_propot_config, check_propot_config
from .hooks import PropotInitialPrototypeHook
from .initial_prototypes import (
    initial_prototypes_from_features,
    load_or_compute_initial_prototypes,
)
from .modeling import (
    AdaptivePrototypeAggregation,
    DomainConditionalPrompting,
    InstanceConditionalPrompting,
    PropotPrototypes,
    PropotT2I,
    prototype_to_instance_loss,
)

__all__ = [
    "add_propot_config",
    "check_propot_config",
    "PropotInitialPrototypeHook",
    "initial_prototypes_from_features",
    "load_or_compute_initial_prototypes",
    "AdaptivePrototypeAggregation",
    "DomainConditionalPrompting",
    "InstanceConditionalPrompting",
    "PropotPrototypes",
    "PropotT2I",
    "prototype_to_instance_loss",
]
