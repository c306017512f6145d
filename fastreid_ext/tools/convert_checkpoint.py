"""Convert a checkpoint released by the IRRA or CSDN authors into a fastreid_ext checkpoint.

Installed as ``fastreid-ext-convert-checkpoint``; in a checkout ``python
tools/convert_checkpoint.py`` runs the same command.

The output loads with ``tools/train_net.py --eval-only MODEL.WEIGHTS DST`` (every key and shape is
checked against the target model here). The keys the authors do not save are filled from OpenAI's
CLIP file (``--clip-weights``) or from the target config; everything done is printed and written
to ``DST`` with ``.json`` as extension, together with the config overrides and the evaluation
command.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence

from fastreid_ext.convert import (
    CSDN_LAYOUT,
    FORMATS,
    IRRA_LAYOUT,
    OPENAI_CLIP,
    ConversionError,
    convert_checkpoint,
    save_converted,
)

__all__ = ["main", "parse_args"]


def _epilog(prog: str) -> str:
    def configs(layout) -> str:
        return ", ".join(f"{n} -> {c}" for n, c in layout.default_configs.items())

    clip = "\n".join(
        f"  {r.file_name}: {r.url}\n    SHA-256 {r.sha256}" for r in OPENAI_CLIP.values()
    )
    return f"""formats:
  irra  IRRA's best.pth (dict with 'model', fp16/fp32, optional 'module.' prefix);
        target by classifier rows: {configs(IRRA_LAYOUT)}
  csdn  CSDN's model_<epoch>.pth (flat 'module.' state dict, fp32);
        target by class count: {configs(CSDN_LAYOUT)}

OpenAI CLIP files (--clip-weights; ViT-B-16.pt for IRRA, RN50.pt for CSDN):
{clip}

examples:
  {prog} --from irra logs/CUHK-PEDES/best.pth converted/irra_cuhk.pth \\
      --clip-weights ~/.cache/clip/ViT-B-16.pt
  {prog} --from csdn sysu/base/models/model_57.pth converted/csdn_sysu.pth \\
      --clip-weights ~/.cache/clip/RN50.pt
  then run the printed command: python tools/train_net.py --config-file ... --eval-only ...
"""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options (flags may come before or after SRC and DST)."""
    prog = os.path.basename(sys.argv[0]) or "fastreid-ext-convert-checkpoint"
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        epilog=_epilog(prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--from",
        dest="fmt",
        required=True,
        choices=sorted(FORMATS),
        help="the released format of SRC",
    )
    p.add_argument("src", metavar="SRC", help="the authors' checkpoint file")
    p.add_argument("dst", metavar="DST", help="the converted checkpoint to write (e.g. X.pth)")
    p.add_argument(
        "--clip-weights",
        metavar="PATH",
        default=None,
        help="OpenAI's CLIP file (ViT-B-16.pt / RN50.pt) for the keys the authors do not save; "
        "not needed for --from csdn --inference-only",
    )
    p.add_argument(
        "--config-file",
        default=None,
        help="target config (path or fastreid_ext:// name); default: by the class count",
    )
    p.add_argument(
        "--inference-only",
        action="store_true",
        help="leave out the training-only modules (classifier, MLM head, prompts, text "
        "encoder): a smaller file that evaluates but cannot be fine-tuned",
    )
    p.add_argument(
        "opts",
        metavar="KEY VALUE",
        nargs="*",
        help="extra config overrides for the target model (after the ones the conversion sets)",
    )
    args = p.parse_intermixed_args(None if argv is None else list(argv))
    if len(args.opts) % 2:
        p.error(f"config overrides come in KEY VALUE pairs, got {args.opts}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Convert, write ``DST`` and its report, print the summary; 0 on success, 2 on a source
    that cannot be converted (the message names the file and the keys)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("fastreid_ext.progress").setLevel(logging.INFO)
    opts: List[str] = list(args.opts)
    try:
        converted = convert_checkpoint(
            args.fmt,
            args.src,
            clip_weights=args.clip_weights,
            config_file=args.config_file,
            opts=opts,
            inference_only=args.inference_only,
        )
        json_path = save_converted(converted, args.dst)
    except ConversionError as exc:
        sys.stderr.write(f"convert_checkpoint: error: {exc}\n")
        return 2
    print(converted.report.format_text())
    print(f"  report: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
