"""Visible-infrared ReID data: SYSU-MM01 and RegDB with their exact test protocols, the
cross-modal identity sampler, CAJ channel augmentations (a transform registry) and synthetic
writers of both real layouts. Importing registers the datasets, transforms and config keys."""

from . import config as _config  # noqa: F401  (registers add_vi_config)
from .base import (
    INFRARED,
    VISIBLE,
    VIDatasetError,
    VIEvaluationPlan,
    VIImage,
    VIRetrievalTask,
)
from .loaders import (
    CrossModalPairSet,
    VITestImageSet,
    build_vi_loader,
    build_vi_sampler,
    build_vi_test_loader,
    build_vi_train_set,
    load_vi_dataset,
)
from .regdb import RegDBCrossModal
from .sampler import CrossModalIdentitySampler
from .synthetic import write_synthetic_regdb, write_synthetic_sysu
from .sysu import SYSUMM01CrossModal
from .transforms import (
    TRANSFORM_REGISTRY,
    ChannelAdapGray,
    ChannelExchange,
    ChannelRandomErasing,
    build_vi_transforms,
)

__all__ = [
    "INFRARED",
    "VISIBLE",
    "VIDatasetError",
    "VIEvaluationPlan",
    "VIImage",
    "VIRetrievalTask",
    "CrossModalPairSet",
    "VITestImageSet",
    "build_vi_loader",
    "build_vi_sampler",
    "build_vi_test_loader",
    "build_vi_train_set",
    "load_vi_dataset",
    "RegDBCrossModal",
    "CrossModalIdentitySampler",
    "write_synthetic_regdb",
    "write_synthetic_sysu",
    "SYSUMM01CrossModal",
    "TRANSFORM_REGISTRY",
    "ChannelAdapGray",
    "ChannelExchange",
    "ChannelRandomErasing",
    "build_vi_transforms",
]
