"""fastreid_ext: CLIP-based cross-modal re-identification for fast-reid.

Importing this package first applies every compatibility fix for ``fastreid==1.4.0``
(:mod:`fastreid_ext.compat`), then registers the shared components into fast-reid's registries.
"""

from . import compat

compat.apply()

__version__ = "0.1.0"
