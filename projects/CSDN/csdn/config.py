"""CSDN config keys (``add_csdn_config``): MsPL prompts, SII fusion, HSE losses, phases, quirks."""

from __future__ import annotations

from fastreid.config import CfgNode as CN

from fastreid_ext.config import register_config

__all__ = ["add_csdn_config"]


@register_config
def add_csdn_config(cfg: CN) -> None:
    """Add ``MODEL.CSDN`` in place (idempotent). Phase 3 (image encoder) uses ``SOLVER.*``."""
    if "CSDN" in cfg.MODEL:
        return
    _C = cfg
    _C.MODEL.CSDN = CN()
    # Authors' stem keeps a single ReLU (after bn3) of CLIP's three; False: CLIP's full stem.
    _C.MODEL.CSDN.STEM_RELU_QUIRK = True
    # Test feature: also encode the horizontally flipped image and concatenate (CSDN HEAD); False:
    # the older code's single pass.
    _C.MODEL.CSDN.TEST_FLIP = True

    # ---------------------------------------------------------------- MsPL (phase 1)
    _C.MODEL.CSDN.PROMPT = CN()
    # Prompt template; each "X" becomes one identity-specific learnable token (CLIP-ReID).
    _C.MODEL.CSDN.PROMPT.TEMPLATE = "A photo of a X X X X person."
    # Two learners (visible, infrared: MsPL) or one shared learner (CLIP-ReID baseline).
    _C.MODEL.CSDN.PROMPT.MODALITY_SPECIFIC = True
    # Std of the normal initialisation of the identity tokens.
    _C.MODEL.CSDN.PROMPT.INIT_STD = 0.02

    # ---------------------------------------------------------------- SII (phase 2)
    _C.MODEL.CSDN.SII = CN()
    # Train the attention fusion of the visible and infrared text features (needs two learners).
    _C.MODEL.CSDN.SII.ENABLED = True
    # "single_key": the authors' form (one key, softmax == 1: fused = t_v + W_c tanh(W_v t_r));
    # "two_key": the visible query attends over the keys of both texts (non-degenerate).
    _C.MODEL.CSDN.SII.FORM = "single_key"
    # Dropout after each tanh projection.
    _C.MODEL.CSDN.SII.DROPOUT = 0.1

    # ---------------------------------------------------------------- HSE (phase 3 losses)
    _C.MODEL.CSDN.HSE = CN()
    # Text targets of the image-to-text losses: "fused" (SII output), "modality" (visible
    # images -> visible prompts, infrared -> infrared prompts) or "shared" (one learner).
    _C.MODEL.CSDN.HSE.TEXT_TARGET = "fused"
    # "hse": CE(f_p(visible view A) @ T^T) * VIS_WEIGHT + CE(f_p(infrared) @ T^T) * IR_WEIGHT
    # (the authors'); "clipreid": CLIP-ReID's label-smoothed CE over every image, CLIPREID_WEIGHT.
    _C.MODEL.CSDN.HSE.FORM = "hse"
    # lambda2: weight of the visible images' image-to-text CE (form "hse").
    _C.MODEL.CSDN.HSE.VIS_WEIGHT = 0.05
    # lambda3: weight of the infrared images' image-to-text CE (form "hse").
    _C.MODEL.CSDN.HSE.IR_WEIGHT = 0.1
    # Weight of the image-to-text CE of form "clipreid" (CLIP-ReID RN50: 1).
    _C.MODEL.CSDN.HSE.CLIPREID_WEIGHT = 1.0
    # Label smoothing of the form-"clipreid" CE (CLIP-ReID: 0.1).
    _C.MODEL.CSDN.HSE.LABEL_SMOOTHING = 0.1
    # Weight of the identity CE of both heads (plain CE, no smoothing).
    _C.MODEL.CSDN.HSE.ID_WEIGHT = 1.0
    # lambda1: weight of the weighted-regularised triplet (AGW) on the GeM and projected features.
    _C.MODEL.CSDN.HSE.TRI_WEIGHT = 0.15
    # Weight of the modality-gap loss MSEL (CSDN HEAD; 0 disables it, as the older code).
    _C.MODEL.CSDN.HSE.MSEL_WEIGHT = 1.0

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
    # Extract the phase-2 image bank with the image encoder in train mode (BN batch statistics of
    # each PHASE1.IMS_PER_BATCH forward batch -- over all ranks with DDP.SYNC_BN, else per rank
    # --, running statistics updated), as the authors' code does; False: eval mode.
    _C.MODEL.CSDN.QUIRKS.FUSION_BANK_TRAIN_MODE = True
    # Extract the phase-3 text bank with SII dropout active (train mode); False: eval mode.
    _C.MODEL.CSDN.QUIRKS.TEXT_BANK_TRAIN_MODE = True
