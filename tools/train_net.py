#!/usr/bin/env python3
"""Train or evaluate any fastreid_ext method: ``python tools/train_net.py --config-file X.yml``.

Flags follow fast-reid: ``--eval-only``, ``--resume``, ``--num-gpus`` (processes per machine:
NCCL on GPUs, gloo with ``MODEL.DEVICE cpu``), ``--num-machines``, ``--machine-rank``,
``--dist-url`` and trailing ``KEY VALUE`` config overrides; ``--abort-timeout SECONDS`` bounds how
long the other ranks live on after one rank fails. Also works under ``torchrun``. Every run writes
``OUTPUT_DIR/run_info.json`` (code version, packages, world size, batch, seed, command, times).
"""

from __future__ import annotations

import sys

import fastreid_ext  # noqa: F401  (applies the fast-reid compatibility fixes, registers components)
from fastreid_ext.engine import argument_parser, build_cfg, launch, main
from fastreid_ext.engine.launch import RankFailedError


def cli(argv=None) -> None:
    args = argument_parser().parse_args(argv)
    cfg = build_cfg(args.config_file, args.opts)
    backend = "gloo" if cfg.MODEL.DEVICE == "cpu" else None
    try:
        launch(
            main,
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
        sys.stderr.write(f"train_net.py: {exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    cli(sys.argv[1:])
