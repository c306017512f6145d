"""fastreid_ext: CLIP-based cross-modal re-identification for fast-reid.

Importing this package first applies every compatibility fix for ``fastreid==1.4.0``
(:mod:`fastreid_ext.compat`), then registers the shared components into fast-reid's registries
(datasets, the CLIP backbone, meta-architectures) and ours (trainer, hooks, evaluators).
"""

from . import compat
from .version import __version__

compat.apply()

# Side-effect imports: each registers its classes into a registry.
from . import registry  # noqa: E402
from .data import datasets as _datasets  # noqa: E402,F401
from .data import vi as _vi  # noqa: E402,F401
from .engine import trainer as _trainer  # noqa: E402,F401
from .evaluation import t2i_evaluator as _t2i_evaluator  # noqa: E402,F401
from .evaluation import vi_evaluator as _vi_evaluator  # noqa: E402,F401
from .modeling.clip import backbone as _clip_backbone  # noqa: E402,F401
from .modeling.meta_arch import clip_t2i_baseline as _baseline  # noqa: E402,F401

__all__ = ["compat", "registry", "__version__"]
