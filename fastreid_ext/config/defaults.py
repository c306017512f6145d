"""Config keys shared by every fastreid_ext method (``add_fastreid_ext_config``)."""

from __future__ import annotations

from fastreid.config import CfgNode as CN


def add_fastreid_ext_config(cfg: CN) -> None:
    """Add the shared keys to a fast-reid config in place (idempotent)."""
    if "CLIP" in cfg.MODEL:
        return
    _C = cfg

    # Python modules imported before anything is built: they register out-of-tree methods
    # (datasets, backbones, meta-architectures, hooks, evaluators) by importing.
    _C.PLUGINS = []
    # Global seed; each rank uses SEED + rank. Negative: a random seed is drawn and logged.
    _C.SEED = 1

    # Dataset root; empty means $FASTREID_DATASETS, or ./datasets when that is unset.
    _C.DATASETS.ROOT = ""

    # ---------------------------------------------------------------- trainer
    _C.TRAINER = CN()
    # Trainer class name in fastreid_ext.registry.TRAINER_REGISTRY.
    _C.TRAINER.NAME = "ExtTrainer"
    # Hooks (names in HOOK_REGISTRY) appended to the default hooks, in this order.
    _C.TRAINER.HOOKS = []
    # DDP find_unused_parameters (needed when some modules do not get a gradient every step).
    _C.TRAINER.FIND_UNUSED_PARAMETERS = False
    # DDP broadcast_buffers: False (fast-reid's choice) lets BN running statistics differ per rank;
    # rank 0's are the ones checkpointed and evaluated. True syncs them from rank 0 every forward.
    _C.TRAINER.BROADCAST_BUFFERS = False
    # Log training progress every this many iterations.
    _C.TRAINER.LOG_PERIOD = 20
    # Stop cleanly (with a checkpoint) after this many epochs in one invocation, for time-limited
    # cluster jobs; continue later with --resume. 0: train to SOLVER.MAX_EPOCH.
    _C.TRAINER.STOP_AFTER_EPOCHS = 0

    # ---------------------------------------------------------------- CLIP backbone
    _C.MODEL.CLIP = CN()
    # Architecture name: a JSON file in fastreid_ext/modeling/clip/model_configs (ViT-B-16, RN50,
    # tiny-vit, tiny-rn) or a path to such a JSON file.
    _C.MODEL.CLIP.NAME = "ViT-B-16"
    # Local weights file: OpenAI TorchScript archive (ViT-B-16.pt) or an open_clip / plain state dict.
    # Required unless RANDOM_INIT is True. Hub names such as "openai" are rejected.
    _C.MODEL.CLIP.WEIGHTS = ""
    # Build with random weights (tests, synthetic demos). Must be set explicitly.
    _C.MODEL.CLIP.RANDOM_INIT = False
    # QuickGELU activations (what OpenAI's weights were trained with).
    _C.MODEL.CLIP.QUICK_GELU = True
    # ViT patch-embedding stride; 0 means the patch size (non-overlapping patches).
    _C.MODEL.CLIP.VIT_STRIDE = 0
    # ResNet: remove the down-sampling of the last stage (CLIP-ReID "last stride 1").
    _C.MODEL.CLIP.RN_LAST_STRIDE_1 = False
    # Token length of the text encoder.
    _C.MODEL.CLIP.CONTEXT_LENGTH = 77

    # ---------------------------------------------------------------- text
    _C.INPUT.TEXT = CN()
    # Masked-language-modelling: probability that an eligible token is selected.
    _C.INPUT.TEXT.MLM_PROB = 0.15
    # Produce MLM inputs in the training batches (needed by the MLM loss).
    _C.INPUT.TEXT.MLM = False

    # ---------------------------------------------------------------- text-image baseline
    # (IRRA: Jiang & Ye, CVPR 2023, Sec. 3; README "Baseline")
    _C.MODEL.T2I = CN()
    # Losses of the CLIP dual-encoder baseline: any of "SDM" (similarity distribution matching),
    # "ID" (identity classification), "MLM" (masked language modelling on the image tokens).
    _C.MODEL.T2I.LOSSES = ["SDM", "ID"]
    # SDM temperature tau: the logits are cos(v, t) / tau.
    _C.MODEL.T2I.SDM_TAU = 0.02
    # SDM epsilon inside log(q + eps), q the normalised label-matching distribution.
    _C.MODEL.T2I.SDM_EPS = 1e-8
    # Weight of the SDM loss (image-to-text + text-to-image).
    _C.MODEL.T2I.SDM_WEIGHT = 1.0
    # Weight of the ID loss: one linear classifier over the training identities, shared by the
    # image and the text features (the mean of the two cross-entropies).
    _C.MODEL.T2I.ID_WEIGHT = 1.0
    # MLM head: one cross-attention layer (masked caption tokens attend to the image tokens), then
    # a transformer of this many layers (IRRA: 4).
    _C.MODEL.T2I.MLM_DEPTH = 4
    # Attention heads of the MLM head's cross-attention and transformer layers.
    _C.MODEL.T2I.MLM_HEADS = 8
    # Weight of the MLM loss (cross-entropy over the CLIP vocabulary at the masked positions).
    _C.MODEL.T2I.MLM_WEIGHT = 1.0

    # ---------------------------------------------------------------- solver additions
    # Adam / AdamW betas (beta1, beta2).
    _C.SOLVER.BETAS = (0.9, 0.999)
    # Adam / AdamW epsilon of the denominator (IRRA: 1e-3).
    _C.SOLVER.EPS = 1e-8
    # Adam / AdamW implementation: torch's fused kernel (one pass over all parameters; same update
    # rule, much cheaper for the millions of per-identity parameters of prototype methods) or the
    # default multi-tensor one. Falls back to the default where fused is unsupported.
    _C.SOLVER.FUSED = True
    # Parameters whose names start with one of these prefixes are "pretrained" and get BASE_LR;
    # every other trainable parameter is a "new module" and gets BASE_LR * NEW_MODULE_LR_FACTOR
    # (biases: see CLASSIFIER_KEYWORDS).
    _C.SOLVER.PRETRAINED_PREFIXES = ["backbone."]
    # LR factor of the new modules (IRRA: 5).
    _C.SOLVER.NEW_MODULE_LR_FACTOR = 1.0
    # New-module parameters with a name component containing one of these train at
    # BASE_LR * NEW_MODULE_LR_FACTOR, biases included (IRRA's "classifier"/"mlm_head" rule); other
    # biases get BASE_LR * BIAS_LR_FACTOR, which replaces the new-module factor (see
    # fastreid_ext/solver/optimizer.py for the whole table).
    _C.SOLVER.CLASSIFIER_KEYWORDS = ["classifier", "mlm_head"]
    # Warm-up length in epochs (may be fractional); WARMUP_FACTOR is the starting LR factor.
    _C.SOLVER.WARMUP_EPOCHS = 0.0
    # Scheduler granularity: "epoch" (LR constant inside an epoch, IRRA) or "iter".
    _C.SOLVER.SCHED_STEP = "epoch"
    # Mixed precision dtype on GPU: "bf16" or "fp16" (fp16 uses a GradScaler). Off on CPU.
    _C.SOLVER.AMP.DTYPE = "bf16"

    # ---------------------------------------------------------------- evaluation
    # Evaluator name in fastreid_ext.registry.EVALUATOR_REGISTRY ("" keeps fast-reid's ReidEvaluator).
    _C.TEST.EVALUATOR = ""
    _C.TEST.T2I = CN()
    # Retrieval direction(s): "t2i", "i2t" or "both".
    _C.TEST.T2I.DIRECTION = "t2i"
    # Save the top-k ranking of every query to OUTPUT_DIR (0: off).
    _C.TEST.T2I.SAVE_RANKING_TOPK = 0
    # Evaluate on this split of the text-image dataset: "test" or "val".
    _C.TEST.T2I.SPLIT = "test"
    # Queries per chunk of the similarity matrix.
    _C.TEST.T2I.CHUNK_SIZE = 2048
