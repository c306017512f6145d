"""The four methods at real size (or tiny), built from their shipped configs with random CLIP
weights of the real architecture, with synthetic batches in the layout their training data has.

Real size (the papers' settings): Baseline (SDM + ID + MLM) / Propot / CPCL with CLIP ViT-B/16 at
384x128, batch 64, 11,003 identities (CUHK-PEDES) for the classifier, Propot's prototypes and
CPCL's cluster memories; CSDN phase 3 with CLIP RN50 at 288x144, 32 visible-infrared pairs
(8 identities x 4, two visible views each), 395 identities (SYSU-MM01). Tiny: the tests'
tiny-vit / tiny-rn at 64x32, batch 8 (CSDN: 6 pairs), 16 identities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from fastreid.config import CfgNode
from torch import nn

from ..engine.setup import build_cfg
from ..engine.trainer import ExtTrainer
from ..model_zoo import get_config_file
from ..solver import build_optimizer
from ..text import ClipTokenizer, mask_tokens

__all__ = ["METHODS", "MethodSpec", "BuiltMethod", "build_method", "make_batches"]

WORDS = (
    "the woman man wears a red blue black white shirt coat jacket skirt pants shoes bag backpack "
    "with long short hair and is carrying walking holding glasses hat dark light grey"
).split()


@dataclass(frozen=True)
class MethodSpec:
    """How one method is benchmarked: its config, its real and tiny architecture and sizes."""

    config: str  # a shipped config, as get_config_file names it ("Baseline/cuhk.yml")
    arch: str
    tiny_arch: str
    size: Tuple[int, int]
    batch: int
    num_ids: int
    opts: Tuple[str, ...] = ()
    kind: str = "t2i"  # "t2i" | "cpcl" | "csdn"


METHODS: Dict[str, MethodSpec] = {
    "Baseline+MLM": MethodSpec("Baseline/cuhk.yml", "ViT-B-16", "tiny-vit", (384, 128), 64, 11003),
    "Propot": MethodSpec("Propot/cuhk.yml", "ViT-B-16", "tiny-vit", (384, 128), 64, 11003),
    "CPCL": MethodSpec("CPCL/cuhk.yml", "ViT-B-16", "tiny-vit", (384, 128), 64, 11003, kind="cpcl"),
    "CSDN phase 3": MethodSpec(
        "CSDN/sysu.yml", "RN50", "tiny-rn", (288, 144), 32, 395, kind="csdn"
    ),
}
TINY = {"size": (64, 32), "t2i_batch": 8, "csdn_batch": 6, "num_ids": 16}


@dataclass
class BuiltMethod:
    """A method ready to step: config, model (train mode, on the device), optimizer, its AMP
    settings (``SOLVER.AMP``, ``SOLVER.CLIP_GRADIENTS``) and the sizes it was built at."""

    name: str
    cfg: CfgNode
    model: nn.Module
    optimizer: torch.optim.Optimizer
    size: Tuple[int, int]
    batch: int
    num_ids: int


def method_cfg(spec: MethodSpec, device: str, tiny: bool, extra: List[str]) -> CfgNode:
    """The shipped config with random CLIP weights of ``spec.arch`` (``tiny_arch`` if tiny)."""
    size = TINY["size"] if tiny else spec.size
    hw = f"[{size[0]},{size[1]}]"
    opts = [
        "MODEL.DEVICE", device, "MODEL.CLIP.NAME", spec.tiny_arch if tiny else spec.arch,
        "MODEL.CLIP.RANDOM_INIT", "True", "MODEL.CLIP.WEIGHTS", "",
        "INPUT.SIZE_TRAIN", hw, "INPUT.SIZE_TEST", hw,
        "MODEL.HEADS.NUM_CLASSES", str(TINY["num_ids"] if tiny else spec.num_ids),
        *spec.opts, *extra,
    ]  # fmt: skip
    if spec.kind == "csdn" and tiny:
        opts += ["MODEL.CSDN.DDP.SYNC_BN", "False"]
    return build_cfg(get_config_file(spec.config), opts)


def build_method(name: str, device: str, tiny: bool, extra: List[str] = ()) -> BuiltMethod:
    """Build ``METHODS[name]`` on ``device`` (seeded: the same weights on every call)."""
    spec = METHODS[name]
    cfg = method_cfg(spec, device, tiny, list(extra))
    torch.manual_seed(0)
    model = ExtTrainer.build_model(cfg)
    num_ids = int(cfg.MODEL.HEADS.NUM_CLASSES)
    dim = getattr(getattr(model, "backbone", None), "embed_dim", None)
    gen = torch.Generator().manual_seed(1)
    if getattr(model, "propot_enabled", False):
        # sums of about six unit-scale features, as eq. (1) gives for CUHK-PEDES
        model.prototypes.set_initial(
            (torch.randn(num_ids, dim, generator=gen) * 6).to(model.device),
            (torch.randn(num_ids, dim, generator=gen) * 6).to(model.device),
        )
    if spec.kind == "cpcl":  # one clustering's memories: num_ids clusters in each modality
        model.reset_memories(
            F.normalize(torch.randn(num_ids, dim, generator=gen), dim=1).to(model.device),
            F.normalize(torch.randn(num_ids, dim, generator=gen), dim=1).to(model.device),
        )
    model.train()
    if spec.kind == "csdn":
        from csdn.phases import build_phase_optimizer  # the plugin the config loaded

        optimizer = build_phase_optimizer(cfg, model, 2)  # phase 3: image encoder + heads
    else:
        optimizer = build_optimizer(cfg, model)
    batch = (TINY["csdn_batch"] if spec.kind == "csdn" else TINY["t2i_batch"]) if tiny else None
    size = TINY["size"] if tiny else spec.size
    return BuiltMethod(name, cfg, model, optimizer, size, batch or spec.batch, num_ids)


def _captions(gen: torch.Generator, n: int) -> List[str]:
    return [
        " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (23,), generator=gen))
        for _ in range(n)
    ]


def make_batches(built: BuiltMethod, n: int, device: str, seed: int = 1) -> List[Dict[str, Any]]:
    """``n`` synthetic training batches in the method's layout, on ``device``.

    Text-image (Baseline, Propot): ``images [B, 3, H, W]`` in 0-255, ``caption_ids [B, 77]``,
    ``targets [B]``, ``mlm_ids`` / ``mlm_labels [B, 77]``. CPCL adds ``image_ids``,
    ``image_labels``, ``text_labels [B]`` (cluster pseudo labels). CSDN phase 3:
    ``vis_images [B, 2, 3, H, W]``, ``ir_images [B, 3, H, W]``, ``vis_targets = ir_targets [B]``
    (B/4 identities x 4).
    """
    gen = torch.Generator().manual_seed(seed)
    b, (h, w), kind = built.batch, built.size, METHODS[built.name].kind
    out = []
    for _ in range(n):
        if kind == "csdn":
            ids = torch.randperm(built.num_ids, generator=gen)[: max(1, b // 2)]
            y = ids.repeat_interleave(2 if b < 8 else 4)[:b]
            batch = {
                "vis_images": torch.rand(b, 2, 3, h, w, generator=gen) * 255,
                "ir_images": torch.rand(b, 3, h, w, generator=gen) * 255,
                "vis_targets": y,
                "ir_targets": y.clone(),
            }
        else:
            tok = ClipTokenizer(built.cfg.MODEL.CLIP.CONTEXT_LENGTH)
            ids = tok(_captions(gen, b))
            mlm = [mask_tokens(row, gen) for row in ids]
            batch = {
                "images": torch.rand(b, 3, h, w, generator=gen) * 255,
                "caption_ids": ids,
                "targets": torch.randint(0, built.num_ids, (b,), generator=gen),
                "mlm_ids": torch.stack([m[0] for m in mlm]),
                "mlm_labels": torch.stack([m[1] for m in mlm]),
            }
            if kind == "cpcl":
                batch["image_ids"] = torch.arange(b)
                batch["image_labels"] = torch.randint(0, built.num_ids, (b,), generator=gen)
                batch["text_labels"] = batch["image_labels"].clone()
        out.append({k: v.to(device) for k, v in batch.items()})
    return out
