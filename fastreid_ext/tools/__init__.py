"""The command-line tools, installed as console scripts (``pyproject.toml``) and run by the thin
wrappers in the repository's ``tools/`` folder:

* ``fastreid-ext-train`` (``tools/train_net.py``): :mod:`fastreid_ext.tools.train_net`;
* ``fastreid-ext-make-synthetic-data`` (``tools/make_synthetic_data.py``):
  :mod:`fastreid_ext.tools.make_synthetic_data`;
* ``fastreid-ext-make-synthetic-vi-data`` (``tools/make_synthetic_vi_data.py``):
  :mod:`fastreid_ext.tools.make_synthetic_vi_data`;
* ``fastreid-ext-extract-features`` (``tools/extract_features.py``):
  :mod:`fastreid_ext.tools.extract_features`;
* ``fastreid-ext-search`` (``tools/search.py``): :mod:`fastreid_ext.tools.search`;
* ``fastreid-ext-serve-search`` (``tools/serve_search.py``): :mod:`fastreid_ext.tools.serve_search`;
* ``fastreid-ext-visualize-results`` (``tools/visualize_results.py``):
  :mod:`fastreid_ext.tools.visualize_results`;
* ``fastreid-ext-export`` (``tools/export.py``): :mod:`fastreid_ext.tools.export`;
* ``fastreid-ext-convert-checkpoint`` (``tools/convert_checkpoint.py``):
  :mod:`fastreid_ext.tools.convert_checkpoint`.

Each module has ``main(argv=None) -> int`` (the exit status).
"""
