"""Encode every training pair (image + caption) in eval mode, sharded over ranks, in dataset order.

Used by methods that need whole-training-set features: Propot's initial prototypes, CPCL's
per-epoch clustering. Every rank ends with the same tensors.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from fastreid.config import CfgNode
from fastreid.evaluation.evaluator import inference_context
from fastreid.utils import comm
from torch.utils.data import DataLoader, Dataset

from ..data.samplers import InferenceBatchSampler
from ..data.text_image import GalleryImageSet, QueryCaptionSet, collate
from ..data.transforms import build_image_transforms
from ..text.tokenizer import ClipTokenizer
from ..utils.progress import progress

__all__ = ["extract_pair_features"]


def _encode(
    model: torch.nn.Module, dataset: Dataset, key: str, cfg: CfgNode, batch_size: int, desc: str
) -> torch.Tensor:
    """Features of ``dataset`` (this rank's shard), gathered from all ranks, in index order."""
    rank, world = comm.get_rank(), comm.get_world_size()
    sampler = InferenceBatchSampler(len(dataset), batch_size, rank, world)
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.DATALOADER.NUM_WORKERS
    )
    idx: List[torch.Tensor] = []
    feats: List[torch.Tensor] = []
    with inference_context(model), torch.no_grad():
        for batch in progress(loader, desc):
            out = model(batch)
            idx.append(batch["indices"])
            feats.append(out[key].float().cpu())
    local = (
        torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long),
        torch.cat(feats) if feats else None,
    )
    parts = comm.all_gather(local) if world > 1 else [local]
    dim = next(p[1].shape[1] for p in parts if p[1] is not None)
    out = torch.empty(len(dataset), dim)
    for i, f in parts:
        if f is not None:
            out[i] = f
    return out


def extract_pair_features(
    model: torch.nn.Module,
    pairs: Sequence[Any],
    cfg: CfgNode,
    batch_size: int = 0,
    size: Optional[Sequence[int]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Image and text features of every training pair, ``([N, D], [N, D])`` float32 on CPU.

    ``model`` follows the text-image inference contract (``{"images"} -> {"image_feats"}``,
    ``{"caption_ids"} -> {"text_feats"}``). Images use the test transform (no augmentation) at
    ``size`` ([H, W]; ``None``: ``INPUT.SIZE_TEST``); each distinct image (by ``image_id``) is
    encoded once and shared by its captions. Work is split over ranks and the result is
    identical on every rank.
    """
    batch_size = batch_size or max(1, cfg.TEST.IMS_PER_BATCH // comm.get_world_size())
    if size is not None:
        if len(size) != 2:
            raise ValueError(f"extract_pair_features: size must be [H, W], got {list(size)}")
        cfg = cfg.clone()
        cfg.defrost()
        cfg.INPUT.SIZE_TEST = [int(x) for x in size]
    image_ids = [p.image_id for p in pairs]
    order = sorted(set(image_ids))
    slot = {img: k for k, img in enumerate(order)}
    first_path: Dict[int, str] = {}
    for p in pairs:
        first_path.setdefault(p.image_id, p.img_path)
    # Identity labels are not needed (and not read): the "targets" of these sets are dummies.
    images = GalleryImageSet(
        [first_path[i] for i in order], [-1] * len(order), build_image_transforms(cfg, False)
    )
    captions = QueryCaptionSet(
        [p.caption for p in pairs], [-1] * len(pairs), ClipTokenizer(cfg.MODEL.CLIP.CONTEXT_LENGTH)
    )
    img_feats = _encode(model, images, "image_feats", cfg, batch_size, "Encoding train images")
    txt_feats = _encode(model, captions, "text_feats", cfg, batch_size, "Encoding train captions")
    return img_feats[torch.tensor([slot[i] for i in image_ids])], txt_feats
