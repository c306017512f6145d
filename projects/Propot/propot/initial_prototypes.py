"""Initial prototypes, eq. (1): per-identity sums of the pretrained CLIP features of every
training pair (encoded at the training resolution), with an on-disk cache keyed by the weights,
architecture, input size and the content of the training data."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from fastreid.config import CfgNode
from fastreid.utils import comm
from torch import nn

from fastreid_ext.data.text_image import dataset_root
from fastreid_ext.engine.distributed import run_on_main_and_share
from fastreid_ext.engine.feature_extraction import extract_pair_features
from fastreid_ext.utils.atomic_io import atomic_torch_save

__all__ = [
    "initial_prototypes_from_features",
    "initial_prototype_cache_meta",
    "initial_prototype_cache_path",
    "load_or_compute_initial_prototypes",
    "training_data_digest",
    "digest_to_fingerprint",
]

logger = logging.getLogger(__name__)

_IMAGE_SUMS = ("pair", "image")  # as MODEL.PROPOT.INIT.IMAGE_SUM_OVER


def initial_prototypes_from_features(
    img_feats: torch.Tensor,
    txt_feats: torch.Tensor,
    labels: torch.Tensor,
    num_ids: int,
    image_ids: Optional[torch.Tensor] = None,
    instance_norm: bool = False,
    prototype_norm: bool = False,
    image_sum_over: str = "pair",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. (1): ``pt_i^v = sum_{j: Y_j = L_i} v_j`` and ``pt_i^t = sum_{j: Y_j = L_i} t_j``.

    Args:
        img_feats, txt_feats: [P, d] features of the P training pairs (the image feature repeated
            for each caption of an image).
        labels: [P] identity of each pair in ``[0, num_ids)``.
        num_ids: N.
        image_ids: [P] image index of each pair; needed for ``image_sum_over="image"``.
        instance_norm: L2-normalise every feature before summing.
        prototype_norm: L2-normalise every sum (identities without instances stay 0).
        image_sum_over: ``"pair"`` sums the image feature once per pair (as eq. 1 is written);
            ``"image"`` once per distinct image (``MODEL.PROPOT.INIT.IMAGE_SUM_OVER``).

    Returns:
        ``(pt^v, pt^t)``, each [N, d] float32.
    """
    if image_sum_over not in _IMAGE_SUMS:
        raise ValueError(
            f"initial prototypes: image_sum_over must be one of {_IMAGE_SUMS}, got "
            f"'{image_sum_over}'"
        )
    labels = labels.long()
    if img_feats.shape != txt_feats.shape or labels.shape != img_feats.shape[:1]:
        raise ValueError(
            f"initial prototypes: features {tuple(img_feats.shape)} / {tuple(txt_feats.shape)} "
            f"and labels {tuple(labels.shape)} do not describe the same pairs"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_ids):
        raise ValueError(
            f"initial prototypes: labels must lie in [0, {num_ids}), got "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    v, t = img_feats.float(), txt_feats.float()
    if instance_norm:
        v, t = F.normalize(v, dim=1), F.normalize(t, dim=1)
    img_rows = torch.arange(len(labels))
    if image_sum_over == "image":
        if image_ids is None:
            raise ValueError("initial prototypes: image_sum_over='image' needs image_ids")
        first: Dict[int, int] = {}
        for row, img in enumerate(image_ids.tolist()):
            first.setdefault(img, row)
        img_rows = torch.tensor(sorted(first.values()), dtype=torch.long)
    pt_v = torch.zeros(num_ids, v.shape[1]).index_add_(0, labels[img_rows], v[img_rows])
    pt_t = torch.zeros(num_ids, t.shape[1]).index_add_(0, labels, t)
    if prototype_norm:
        pt_v, pt_t = F.normalize(pt_v, dim=1), F.normalize(pt_t, dim=1)
    return pt_v, pt_t


def training_data_digest(
    pairs: Sequence[Any], labels: Sequence[int], num_ids: int, root: str = ""
) -> str:
    """SHA-1 (hex) of the training data as eq. (1) sees it: ``num_ids`` and, in order, every
    pair's ``(label, image_id, img_path, caption)``, with ``root`` (the dataset root) stripped
    from the paths so that moving the dataset folder keeps the digest. About 0.15 s for
    CUHK-PEDES's 68k pairs."""
    if len(labels) != len(pairs):
        raise ValueError(f"{len(pairs)} training pairs but {len(labels)} labels")
    prefixes = tuple({os.path.join(r, "") for r in (root, os.path.abspath(root)) if root})
    rows = [
        [int(y), int(p.image_id), _strip(p.img_path, prefixes), p.caption]
        for y, p in zip(labels, pairs)
    ]
    text = json.dumps([int(num_ids), rows], ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def _strip(path: str, prefixes: Tuple[str, ...]) -> str:
    for prefix in prefixes:
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def digest_to_fingerprint(digest: str) -> int:
    """The first 64 bits of a hex digest as a non-zero signed int64 (0 means "unknown")."""
    return int.from_bytes(bytes.fromhex(digest[:16]), "big", signed=True) or 1


def _file_descriptor(path: str) -> Dict[str, Any]:
    """Absolute path, size and modification time of a file."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _parameter_fingerprint(model: nn.Module) -> str:
    """Rounded float64 sums of the encoder parameters (tells apart any two weight sets)."""
    module = getattr(model, "backbone", model)
    h = hashlib.sha1()
    with torch.no_grad():
        for name, p in module.named_parameters():
            x = p.detach().double()
            h.update(
                f"{name}:{tuple(p.shape)}:{x.sum().item():.6e}:{x.abs().sum().item():.6e};".encode()
            )
    return h.hexdigest()


def initial_prototype_cache_meta(
    cfg: CfgNode, model: nn.Module, num_pairs: int, num_ids: int, data_sha1: str = ""
) -> Dict[str, Any]:
    """Everything the initial prototypes depend on: CLIP weights (file path/size/mtime, or random
    init + seed), a fingerprint of the encoder parameters, the architecture, input sizes (the
    extraction runs at ``INPUT.SIZE_TRAIN``) and normalisation, the datasets and their root, the
    numbers of pairs and identities, the content of the pairs (``data_sha1``, from
    :func:`training_data_digest`) and the ``MODEL.PROPOT.INIT`` options."""
    clip = cfg.MODEL.CLIP
    if clip.RANDOM_INIT:
        weights: Dict[str, Any] = {"random_init": True, "seed": int(cfg.SEED)}
    else:
        weights = (
            _file_descriptor(clip.WEIGHTS)
            if os.path.isfile(clip.WEIGHTS)
            else {"path": clip.WEIGHTS}
        )
    arch: Dict[str, Any] = {
        "name": clip.NAME,
        "quick_gelu": bool(clip.QUICK_GELU),
        "vit_stride": int(clip.VIT_STRIDE),
        "rn_last_stride_1": bool(clip.RN_LAST_STRIDE_1),
        "context_length": int(clip.CONTEXT_LENGTH),
    }
    if os.path.isfile(clip.NAME):
        with open(clip.NAME, "rb") as f:
            arch["json_sha1"] = hashlib.sha1(f.read()).hexdigest()
    init = cfg.MODEL.PROPOT.INIT
    return {
        "version": 3,
        "clip_weights": weights,
        "model_weights": _file_descriptor(cfg.MODEL.WEIGHTS)
        if cfg.MODEL.WEIGHTS and os.path.isfile(cfg.MODEL.WEIGHTS)
        else "",
        "parameters": _parameter_fingerprint(model),
        "architecture": arch,
        "size_train": [int(x) for x in cfg.INPUT.SIZE_TRAIN],
        "size_test": [int(x) for x in cfg.INPUT.SIZE_TEST],
        "extraction_size": [int(x) for x in cfg.INPUT.SIZE_TRAIN],
        "pixel_mean": [float(x) for x in cfg.MODEL.PIXEL_MEAN],
        "pixel_std": [float(x) for x in cfg.MODEL.PIXEL_STD],
        "datasets": list(cfg.DATASETS.NAMES),
        "dataset_root": os.path.abspath(dataset_root(cfg)),
        "num_pairs": int(num_pairs),
        "num_ids": int(num_ids),
        "data_sha1": data_sha1,
        "instance_norm": bool(init.INSTANCE_NORM),
        "prototype_norm": bool(init.PROTOTYPE_NORM),
        "image_sum_over": str(init.IMAGE_SUM_OVER),
    }


def initial_prototype_cache_path(cfg: CfgNode, meta: Dict[str, Any]) -> str:
    """``<MODEL.PROPOT.INIT.CACHE_DIR or OUTPUT_DIR>/propot_initial_prototypes_<sha1>.pt``."""
    key = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20]
    folder = cfg.MODEL.PROPOT.INIT.CACHE_DIR or cfg.OUTPUT_DIR or "."
    return os.path.join(folder, f"propot_initial_prototypes_{key}.pt")


def _read_cache(path: str, meta: Dict[str, Any]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    if not os.path.isfile(path):
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        stored = json.loads(data["meta"])
        pt_v, pt_t = data["initial_v"], data["initial_t"]
    except Exception as exc:  # a truncated or foreign file: recompute and overwrite it
        logger.warning("Ignoring unreadable initial-prototype cache %s (%s)", path, exc)
        return None
    if stored != meta or pt_v.shape[0] != meta["num_ids"] or pt_v.shape != pt_t.shape:
        logger.warning("Ignoring initial-prototype cache %s: it was made for other inputs", path)
        return None
    return pt_v.float(), pt_t.float()


def _write_cache(path: str, meta: Dict[str, Any], pt_v: torch.Tensor, pt_t: torch.Tensor) -> None:
    data = {"meta": json.dumps(meta, sort_keys=True), "initial_v": pt_v, "initial_t": pt_t}
    atomic_torch_save(data, path)


def load_or_compute_initial_prototypes(
    model: nn.Module,
    pairs: Sequence[Any],
    labels: Sequence[int],
    num_ids: int,
    cfg: CfgNode,
    data_sha1: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """pt^v, pt^t [N, d] of the training ``pairs`` (TrainPair-like: ``image_id``, ``img_path``,
    ``caption``) with identities ``labels``, from the cache or by encoding every pair with
    ``model`` (unwrapped; the text-image inference contract) in eval mode. Images use the test
    transform (no augmentation) at the training resolution ``INPUT.SIZE_TRAIN``.
    ``data_sha1``: :func:`training_data_digest` of the pairs, when the caller has it already.

    Collective when distributed: rank 0 decides whether the cache is valid and shares its tensors
    (``run_on_main_and_share``: an error on rank 0 is raised on every rank); otherwise every rank
    encodes its shard, the features are gathered and every rank sums them identically. Rank 0
    writes the cache, and a failure to write it is raised on every rank as well.

    Returns:
        ``(pt_v, pt_t, source)`` on CPU, ``source`` in {"cache", "computed"}.
    """
    if len(labels) != len(pairs):
        raise ValueError(f"{len(pairs)} training pairs but {len(labels)} labels")

    def find_cache() -> Tuple[Dict[str, Any], str, Optional[Tuple[torch.Tensor, torch.Tensor]]]:
        digest = data_sha1 or training_data_digest(pairs, labels, num_ids, dataset_root(cfg))
        meta = initial_prototype_cache_meta(cfg, model, len(pairs), num_ids, digest)
        path = initial_prototype_cache_path(cfg, meta)
        return meta, path, _read_cache(path, meta)

    meta, path, cached = run_on_main_and_share(find_cache, "Reading the initial-prototype cache")
    if cached is not None:
        logger.info("Propot initial prototypes loaded from cache %s", path)
        return cached[0], cached[1], "cache"

    pt_v, pt_t = _compute_initial_prototypes(model, pairs, labels, num_ids, cfg)
    run_on_main_and_share(
        lambda: _write_cache(path, meta, pt_v, pt_t), "Writing the initial-prototype cache"
    )
    if comm.is_main_process():
        logger.info("Propot initial prototypes cached to %s", path)
    return pt_v, pt_t, "computed"


def _compute_initial_prototypes(
    model: nn.Module, pairs: Sequence[Any], labels: Sequence[int], num_ids: int, cfg: CfgNode
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. (1) from the features of every pair, extracted by all ranks (each its shard) with
    ``MODEL.PROPOT.INIT.IMS_PER_BATCH`` images or captions per step over all ranks."""
    init = cfg.MODEL.PROPOT.INIT
    logger.info("Computing Propot initial prototypes from %d training pairs", len(pairs))
    per_rank = max(1, init.IMS_PER_BATCH // comm.get_world_size()) if init.IMS_PER_BATCH else 0
    img, txt = extract_pair_features(
        model, pairs, cfg, batch_size=per_rank, size=cfg.INPUT.SIZE_TRAIN
    )
    label_tensor = torch.as_tensor(list(labels))
    pt_v, pt_t = initial_prototypes_from_features(
        img,
        txt,
        label_tensor,
        num_ids,
        image_ids=torch.as_tensor([p.image_id for p in pairs]),
        instance_norm=init.INSTANCE_NORM,
        prototype_norm=init.PROTOTYPE_NORM,
        image_sum_over=init.IMAGE_SUM_OVER,
    )
    empty = int((torch.bincount(label_tensor, minlength=num_ids) == 0).sum())
    if empty:
        logger.warning(
            "%d of %d identities have no training pair: their prototypes are 0", empty, num_ids
        )
    return pt_v, pt_t
