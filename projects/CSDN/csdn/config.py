"""CSDN config keys (``add_csdn_config``) and their checks (``check_csdn_config``).

One node per paper module (``MSPL``, ``SII``, ``HSE``) and per phase-3 loss (``ID``, ``TRIPLET``,
``MSEL``); ``ENABLED`` switches a module, ``NAME`` selects a variant, ``WEIGHT`` weighs a loss.
The defaults are the authors' code (github.com/nengdong96/CSDN, ``main.py`` arguments and
``core/train.py``); projects/CSDN/README.md documents every choice.
"""

from __future__ import annotations

from fastreid.config import CfgNode as CN

from fastreid_ext.config import ConfigValueError, check_choice, check_range, register_config

__all__ = ["add_csdn_config", "check_csdn_config", "SII_NAMES", "HSE_NAMES", "TEXT_TARGETS"]

#: ``MODEL.CSDN.SII.NAME``: the authors' single-key attention, or attention over both texts.
SII_NAMES = ("single_key", "two_key")
#: ``MODEL.CSDN.HSE.NAME``: CSDN's two weighted image-to-text CEs, or CLIP-ReID's single CE.
HSE_NAMES = ("hse", "clipreid")
#: ``MODEL.CSDN.HSE.TEXT_TARGET``: SII output, each modality's own prompts, one shared prompt.
TEXT_TARGETS = ("fused", "modality", "shared")


@register_config
def add_csdn_config(cfg: CN) -> None:
    """Add ``MODEL.CSDN`` in place (idempotent). Phase 3 (image encoder) uses ``SOLVER.*``."""
    if "CSDN" in cfg.MODEL:
        return
    _C = cfg
    _C.MODEL.CSDN = CN()
    # Test feature: also encode the horizontally flipped image and concatenate (the authors'
    # current code); False: their earlier single pass.
    _C.MODEL.CSDN.TEST_FLIP = True

    # ---------------------------------------------------------------- MsPL (phase 1)
    _C.MODEL.CSDN.MSPL = CN()
    # Modality-specific prompt learning: one prompt learner for visible and one for infrared
    # images. False: one learner shared by both modalities (the CLIP-ReID baseline).
    _C.MODEL.CSDN.MSPL.ENABLED = True
    # Prompt template; each "X" becomes one identity-specific learnable token (CLIP-ReID).
    _C.MODEL.CSDN.MSPL.TEMPLATE = "A photo of a X X X X person."
    # Std of the normal initialisation of the identity tokens.
    _C.MODEL.CSDN.MSPL.INIT_STD = 0.02

    # ---------------------------------------------------------------- SII (phase 2)
    _C.MODEL.CSDN.SII = CN()
    # Train the attention fusion of the visible and infrared text features (needs MSPL.ENABLED).
    _C.MODEL.CSDN.SII.ENABLED = True
    # "single_key": the authors' form (one key, softmax == 1: fused = t_v + W_c tanh(W_v t_r));
    # "two_key": the visible query attends over the keys of both texts (non-degenerate).
    _C.MODEL.CSDN.SII.NAME = "single_key"
    # Dropout after each tanh projection.
    _C.MODEL.CSDN.SII.DROPOUT = 0.1

    # ---------------------------------------------------------------- HSE (phase-3 image-to-text)
    _C.MODEL.CSDN.HSE = CN()
    # "hse": VIS_WEIGHT * CE(f_p(visible view A) @ T^T) + IR_WEIGHT * CE(f_p(infrared) @ T^T)
    # (the authors'); "clipreid": CLIP-ReID's label-smoothed CE over every image (HSE.CLIPREID).
    _C.MODEL.CSDN.HSE.NAME = "hse"
    # Text targets T of the image-to-text losses: "fused" (SII output, needs SII.ENABLED),
    # "modality" (visible images -> visible prompts, infrared -> infrared prompts, needs
    # MSPL.ENABLED) or "shared" (the one prompt learner of MSPL.ENABLED False).
    _C.MODEL.CSDN.HSE.TEXT_TARGET = "fused"
    # lambda2: weight of the visible images' image-to-text CE (NAME "hse").
    _C.MODEL.CSDN.HSE.VIS_WEIGHT = 0.05
    # lambda3: weight of the infrared images' image-to-text CE (NAME "hse").
    _C.MODEL.CSDN.HSE.IR_WEIGHT = 0.1
    _C.MODEL.CSDN.HSE.CLIPREID = CN()
    # Weight of the image-to-text CE of NAME "clipreid" (CLIP-ReID RN50: 1).
    _C.MODEL.CSDN.HSE.CLIPREID.WEIGHT = 1.0
    # Label smoothing of that CE (CLIP-ReID: 0.1).
    _C.MODEL.CSDN.HSE.CLIPREID.LABEL_SMOOTHING = 0.1

    # ---------------------------------------------------------------- phase-3 image losses
    _C.MODEL.CSDN.ID = CN()
    # Weight of the identity CE of both heads (plain CE, no smoothing).
    _C.MODEL.CSDN.ID.WEIGHT = 1.0
    _C.MODEL.CSDN.TRIPLET = CN()
    # lambda1: weight of the weighted-regularised triplet (AGW) on the GeM and projected features.
    _C.MODEL.CSDN.TRIPLET.WEIGHT = 0.15
    _C.MODEL.CSDN.MSEL = CN()
    # The modality-gap loss MSEL of the authors' current code (their earlier code has none); it
    # needs DATALOADER.NUM_INSTANCE >= 2.
    _C.MODEL.CSDN.MSEL.ENABLED = True
    # Weight of MSEL.
    _C.MODEL.CSDN.MSEL.WEIGHT = 1.0

    # ---------------------------------------------------------------- phases 1 and 2
    for name, batch in (("PHASE1", 32), ("PHASE2", 64)):
        node = CN()
        # Epochs of the phase (authors: 60 each); phase 3 runs SOLVER.MAX_EPOCH epochs.
        node.EPOCHS = 60
        # Feature-bank items per batch (phase 1: visible-infrared pairs; phase 2: features).
        # PHASE1's value (the authors' stage1_batch_size) also batches the forward passes of both
        # image-bank extractions; under DDP each rank forwards IMS_PER_BATCH / world pairs, and
        # SupCon runs over the whole batch (DDP.GATHER_LOSS_FEATURES) or each rank's share.
        node.IMS_PER_BATCH = batch
        # Adam learning rate; the LR follows timm's cosine stepped per epoch from epoch 0:
        # linear warm-up from WARMUP_LR_INIT, then cos(pi * epoch / EPOCHS) down to ETA_MIN_LR.
        node.BASE_LR = 3.0e-4
        # Adam weight decay (L2 added to the gradient, as torch.optim.Adam).
        node.WEIGHT_DECAY = 1.0e-4
        # Warm-up length in epochs.
        node.WARMUP_EPOCHS = 5
        # LR of the first warm-up epoch.
        node.WARMUP_LR_INIT = 1.0e-5
        # Final LR of the cosine.
        node.ETA_MIN_LR = 1.0e-6
        _C.MODEL.CSDN[name] = node

    # ---------------------------------------------------------------- distributed training
    # Both keys act only with several processes (a one-process run is unchanged); their defaults
    # reproduce the authors' single-GPU batch as far as possible (projects/CSDN/README.md).
    _C.MODEL.CSDN.DDP = CN()
    # Convert the BatchNorm layers of the image encoder and of both heads to torch's
    # SyncBatchNorm, so train-mode BN (phase 3, and the phase-2 image bank of
    # QUIRKS.FUSION_BANK_TRAIN_MODE) normalises with the statistics of the whole global batch
    # instead of each rank's 1/world share. CUDA only: a CPU (gloo) run with several processes
    # must set it False (it fails with an error naming this key otherwise).
    _C.MODEL.CSDN.DDP.SYNC_BN = True
    # All-gather (with gradient) the features and labels of the batch-pool losses -- phase-3 WRT
    # triplet and MSEL, phase-1/2 SupCon -- so every rank computes them over the whole global
    # batch (the other identities as negatives); the gathered gradients are summed over ranks
    # before DDP averages, giving exactly the single-process gradient. False: each rank's losses
    # see only its own share of the batch.
    _C.MODEL.CSDN.DDP.GATHER_LOSS_FEATURES = True

    # ---------------------------------------------------------------- authors' quirks
    _C.MODEL.CSDN.QUIRKS = CN()
    # The ResNet stems keep a single ReLU (after bn3) of CLIP's three, as the authors' stems;
    # False: CLIP's full stem.
    _C.MODEL.CSDN.QUIRKS.STEM_SINGLE_RELU = True
    # Extract the phase-2 image bank with the image encoder in train mode (BN batch statistics of
    # each PHASE1.IMS_PER_BATCH forward batch -- over all ranks with DDP.SYNC_BN, else per rank
    # --, running statistics updated), as the authors' code does; False: eval mode.
    _C.MODEL.CSDN.QUIRKS.FUSION_BANK_TRAIN_MODE = True
    # Extract the phase-3 text bank with SII dropout active (train mode); False: eval mode.
    _C.MODEL.CSDN.QUIRKS.TEXT_BANK_TRAIN_MODE = True


def _check_text_target(c: CN) -> None:
    """``HSE.TEXT_TARGET`` is known and its text exists with the enabled modules."""
    key = "MODEL.CSDN.HSE.TEXT_TARGET"
    target = check_choice(key, c.HSE.TEXT_TARGET, TEXT_TARGETS)
    if target == "fused" and not c.SII.ENABLED:
        raise ConfigValueError(
            key, target, "'modality' or 'shared' while MODEL.CSDN.SII.ENABLED is False"
        )
    if target == "modality" and not c.MSPL.ENABLED:
        raise ConfigValueError(key, target, "'shared' while MODEL.CSDN.MSPL.ENABLED is False")
    if target == "shared" and c.MSPL.ENABLED:
        raise ConfigValueError(
            key, target, "'fused' or 'modality' while MODEL.CSDN.MSPL.ENABLED is True"
        )


def check_csdn_config(cfg: CN) -> None:
    """Raise :class:`~fastreid_ext.config.ConfigValueError` (naming the key, the value and what
    is allowed) for any bad ``MODEL.CSDN`` value or combination."""
    c = cfg.MODEL.CSDN
    check_choice("MODEL.CSDN.SII.NAME", c.SII.NAME, SII_NAMES)
    check_choice("MODEL.CSDN.HSE.NAME", c.HSE.NAME, HSE_NAMES)
    if c.SII.ENABLED and not c.MSPL.ENABLED:
        raise ConfigValueError(
            "MODEL.CSDN.SII.ENABLED",
            True,
            "False while MODEL.CSDN.MSPL.ENABLED is False "
            "(SII fuses the visible and the infrared prompts)",
        )
    _check_text_target(c)
    weights = {
        "HSE.VIS_WEIGHT": c.HSE.VIS_WEIGHT,
        "HSE.IR_WEIGHT": c.HSE.IR_WEIGHT,
        "HSE.CLIPREID.WEIGHT": c.HSE.CLIPREID.WEIGHT,
        "ID.WEIGHT": c.ID.WEIGHT,
        "TRIPLET.WEIGHT": c.TRIPLET.WEIGHT,
        "MSEL.WEIGHT": c.MSEL.WEIGHT,
    }
    for name, value in weights.items():
        check_range(f"MODEL.CSDN.{name}", value, 0.0)
    check_range("MODEL.CSDN.HSE.CLIPREID.LABEL_SMOOTHING", c.HSE.CLIPREID.LABEL_SMOOTHING, 0.0, 1.0)
    check_range("MODEL.CSDN.SII.DROPOUT", c.SII.DROPOUT, 0.0, 1.0)
    if c.MSEL.ENABLED and cfg.DATALOADER.NUM_INSTANCE < 2:
        raise ConfigValueError(
            "MODEL.CSDN.MSEL.ENABLED",
            True,
            "False while DATALOADER.NUM_INSTANCE < 2 (MSEL "
            "compares each image with the K-1 others of its identity; got K = "
            f"{cfg.DATALOADER.NUM_INSTANCE})",
        )
    for phase in ("PHASE1", "PHASE2"):
        check_range(f"MODEL.CSDN.{phase}.EPOCHS", c[phase].EPOCHS, 0)
        check_range(f"MODEL.CSDN.{phase}.IMS_PER_BATCH", c[phase].IMS_PER_BATCH, 1)
    check_range("SOLVER.MAX_EPOCH", cfg.SOLVER.MAX_EPOCH, 1)
