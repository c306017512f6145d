"""A plugin discovered only through the ``fastreid_ext.plugins`` entry-point group."""

from __future__ import annotations

from fastreid.engine.train_loop import HookBase

from fastreid_ext.registry import HOOK_REGISTRY


@HOOK_REGISTRY.register()
class EntryPointMarkerHook(HookBase):
    """Writes ``entry_point_hook.txt`` in OUTPUT_DIR when training starts."""

    def __init__(self, cfg, trainer) -> None:
        self.path = f"{cfg.OUTPUT_DIR}/entry_point_hook.txt"

    def before_train(self) -> None:
        with open(self.path, "w") as f:
            f.write("loaded through the entry point\n")
