"""Config keys shared by visible-infrared methods (``add_vi_config``, applied to every config)."""

from __future__ import annotations

from fastreid.config import CfgNode as CN

from ...config import register_config

__all__ = ["add_vi_config"]


@register_config
def add_vi_config(cfg: CN) -> None:
    """Add ``DATASETS.VI``, ``INPUT.VI`` and ``TEST.VI`` in place (idempotent)."""
    if "VI" in cfg.DATASETS:
        return
    _C = cfg

    _C.DATASETS.VI = CN()
    # RegDB split 1..10 (idx/*_{t}.txt); one model is trained and tested per trial.
    _C.DATASETS.VI.REGDB_TRIAL = 1

    _C.INPUT.VI = CN()
    # PIL filter of every resize ("lanczos" = PIL's ANTIALIAS used by AGW / CAJ / CSDN,
    # "bicubic", "bilinear").
    _C.INPUT.VI.INTERPOLATION = "lanczos"
    # Tensor augmentations (names in fastreid_ext.data.vi.transforms.TRANSFORM_REGISTRY) applied
    # after resize / pad+crop / flip, one list per visible view; two views = CAJ / CSDN's plain
    # view and channel-exchanged view of each sampled visible image.
    _C.INPUT.VI.VISIBLE_AUG_VIEWS = [["ChannelRandomErasing"]]
    # Tensor augmentations of the infrared images (one view).
    _C.INPUT.VI.INFRARED_AUG = ["ChannelRandomErasing"]
    # ChannelRandomErasing: probability, area range, aspect lower bound and fill value; the fill
    # is in the model's normalised space (CAJ fills the ImageNet-normalised tensor with these).
    _C.INPUT.VI.ERASING_PROB = 0.5
    _C.INPUT.VI.ERASING_AREA = (0.02, 0.4)
    _C.INPUT.VI.ERASING_MIN_ASPECT = 0.3
    _C.INPUT.VI.ERASING_VALUE = (0.4914, 0.4822, 0.4465)
    # ChannelExchange: draw idx in 0..GRAY; 0-2 copy that channel to all, >= 3 = luminance gray.
    _C.INPUT.VI.EXCHANGE_GRAY = 2
    # ChannelAdapGray: in its 4th branch, probability of the luminance gray image.
    _C.INPUT.VI.ADAP_GRAY_PROB = 0.5

    _C.TEST.VI = CN()
    # SYSU-MM01 settings "<all|indoor>-<single|multi>"; the first gives the unprefixed metrics
    # (and "metric" = its R1), the others are reported as "<setting>/R1" etc.
    _C.TEST.VI.SYSU_SETTINGS = ["all-single"]
    # RegDB directions "v2i" (visible query, thermal gallery) and/or "i2v"; first is unprefixed.
    _C.TEST.VI.REGDB_DIRECTIONS = ["v2i"]
    # Gallery trials of SYSU (seeds 0..TRIALS-1), metrics averaged over them.
    _C.TEST.VI.TRIALS = 10
    # SYSU multi-shot galleries (10 images per identity/camera folder, numpy choice without
    # replacement). "sequential" (the authors': CSDN seeds numpy with its --seed before building
    # the loaders, so one RandomState(MULTI_SHOT_SEED) per setting is consumed by trials 0, 1, ..
    # in order) or "per_trial" (RandomState(trial) for each trial, independent of the others).
    # Single-shot galleries always use AGW's random.seed(trial).
    _C.TEST.VI.MULTI_SHOT_SEEDING = "sequential"
    # Seed of the "sequential" multi-shot draw (the authors' --seed default: 1).
    _C.TEST.VI.MULTI_SHOT_SEED = 1
    # CMC is reported up to this rank (AGW: 20; cut to the gallery size).
    _C.TEST.VI.MAX_RANK = 20
    # Queries per chunk of the ranking computation (memory about CHUNK_SIZE x gallery x 25 bytes).
    _C.TEST.VI.CHUNK_SIZE = 4096
    # Save the top-k ranking of every query of every task (trial 0's gallery) to
    # OUTPUT_DIR/ranking_<dataset>_<task>.jsonl after each evaluation (0: off).
    _C.TEST.VI.SAVE_RANKING_TOPK = 0
