"""The one version number of fastreid-ext.

``pyproject.toml`` reads it (``[tool.setuptools.dynamic]``) when a wheel or an editable install is
built, and ``fastreid_ext.__version__`` re-exports it. Releases are listed in ``CHANGELOG.md``.
"""

__version__ = "0.2.0.dev0"
