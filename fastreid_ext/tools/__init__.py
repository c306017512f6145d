"""The command-line tools, installed as console scripts (``pyproject.toml``) and run by the thin
wrappers in the repository's ``tools/`` folder:

* ``fastreid-ext-train`` (``tools/train_net.py``): :mod:`fastreid_ext.tools.train_net`;
* ``fastreid-ext-make-synthetic-data`` (``tools/make_synthetic_data.py``):
  :mod:`fastreid_ext.tools.make_synthetic_data`;
* ``fastreid-ext-make-synthetic-vi-data`` (``tools/make_synthetic_vi_data.py``):
  :mod:`fastreid_ext.tools.make_synthetic_vi_data`.

Each module has ``main(argv=None) -> int`` (the exit status).
"""
