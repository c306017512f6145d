"""Converters for the checkpoints released by the authors of IRRA and CSDN.

``convert_checkpoint("irra" | "csdn", src, clip_weights=...)`` returns a float32 state dict in
this project's key names and a :class:`ConversionReport`; ``save_converted`` writes the
checkpoint that ``tools/train_net.py --eval-only`` loads (``MODEL.WEIGHTS``) and the report.
The command line is ``tools/convert_checkpoint.py`` (``fastreid-ext-convert-checkpoint``).
"""

from .api import (
    FORMATS,
    Converted,
    FormatSpec,
    convert_checkpoint,
    eval_command,
    report_path,
    save_converted,
)
from .common import OPENAI_CLIP, ClipRelease, ConversionError, ConversionReport, ReleasedLayout
from .csdn import CSDN_LAYOUT
from .irra import IRRA_LAYOUT

__all__ = [
    "CSDN_LAYOUT",
    "ClipRelease",
    "ConversionError",
    "ConversionReport",
    "Converted",
    "FORMATS",
    "FormatSpec",
    "IRRA_LAYOUT",
    "OPENAI_CLIP",
    "ReleasedLayout",
    "convert_checkpoint",
    "eval_command",
    "report_path",
    "save_converted",
]
