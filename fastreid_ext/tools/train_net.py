"""Train or evaluate any fastreid_ext method: ``fastreid-ext-train --config-file X.yml`` (or
``python tools/train_net.py --config-file X.yml`` in a checkout).

Flags follow fast-reid: ``--eval-only``, ``--resume``, ``--num-gpus`` (processes per machine:
NCCL on GPUs, gloo with ``MODEL.DEVICE cpu``), ``--num-machines``, ``--machine-rank``,
``--dist-url`` and trailing ``KEY VALUE`` config overrides; ``--abort-timeout SECONDS`` bounds how
long the other ranks live on after one rank fails. ``--config-file`` takes a path or a shipped
config's name (``fastreid_ext://Propot/cuhk.yml``); ``--help`` lists them. Also works under
``torchrun``. Every run writes ``OUTPUT_DIR/run_info.json`` (code version, packages, world size,
batch, seed, command, times).
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from fastreid_ext.config import ConfigValueError
from fastreid_ext.engine import argument_parser, build_cfg, launch
from fastreid_ext.engine import main as run_main
from fastreid_ext.engine.launch import RankFailedError
from fastreid_ext.engine.setup import check_device
from fastreid_ext.model_zoo import resolve_config_path

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), check the config and launch the run(s).

    Returns 0 on success, 1 when a rank failed (it printed its own traceback) and 2 for a
    config file that does not exist or a config value that cannot work here (``MODEL.DEVICE
    cuda`` without CUDA), reported before any process starts.
    """
    prog = os.path.basename(sys.argv[0]) or "fastreid-ext-train"
    parser = argument_parser(prog)
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        if args.config_file:
            args.config_file = resolve_config_path(args.config_file)
        cfg = build_cfg(args.config_file, args.opts)
        check_device(cfg)
    except (FileNotFoundError, ConfigValueError) as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")
    backend = "gloo" if cfg.MODEL.DEVICE == "cpu" else None
    try:
        launch(
            run_main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            backend=backend,
            abort_timeout=args.abort_timeout,
        )
    except RankFailedError as exc:
        # The failing rank has printed its own traceback; a second one from here adds nothing.
        sys.stderr.write(f"{prog}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
