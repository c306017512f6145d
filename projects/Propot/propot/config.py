"""Propot config keys (``add_propot_config``): initial prototypes, DPP, IPP, aggregation, L_p2i.

Every choice the paper leaves open (text-reid.md §3.6) is a key here; the defaults follow the
paper's text where it is explicit and are documented in projects/Propot/README.md otherwise.
"""

from __future__ import annotations

from fastreid.config import CfgNode as CN

from fastreid_ext.config import register_config

__all__ = ["add_propot_config"]


@register_config
def add_propot_config(cfg: CN) -> None:
    """Add ``MODEL.PROPOT`` in place (idempotent)."""
    if "PROPOT" in cfg.MODEL:
        return
    _C = cfg
    _C.MODEL.PROPOT = CN()
    # Identity-level matching with prototypes (L_p2i). False: the instance-level baseline only
    # (Table 4 row 0); the prototype modules are not built and the initial-prototype hook is idle.
    _C.MODEL.PROPOT.ENABLED = True
    # Compute DPP/IPP/APA only for the identities present in the batch. Exactly equivalent for
    # L_p2i (absent identities have no positives and are skipped); False: all N prototypes.
    _C.MODEL.PROPOT.BATCH_IDENTITIES_ONLY = True
    # Width of the FFN of every SAE/CAD block relative to d (4: 2048 for d = 512).
    _C.MODEL.PROPOT.FFN_RATIO = 4
    # Attention heads of every SAE/CAD block (paper: 8).
    _C.MODEL.PROPOT.HEADS = 8
    # Pre-LN blocks (CLIP / IRRA style: x + Attn(LN(x)), x + FFN(LN(x))); False: post-LN.
    _C.MODEL.PROPOT.NORM_FIRST = True
    # Dropout in attention and FFN (0 keeps BATCH_IDENTITIES_ONLY bit-for-bit equivalent).
    _C.MODEL.PROPOT.DROPOUT = 0.0

    # ---------------------------------------------------------------- initial prototypes (eq. 1)
    _C.MODEL.PROPOT.INIT = CN()
    # L2-normalise each instance feature before the per-identity sum (paper: raw features).
    _C.MODEL.PROPOT.INIT.INSTANCE_NORM = False
    # L2-normalise each summed prototype pt_i (paper: the raw sum, whose norm grows with N_i).
    _C.MODEL.PROPOT.INIT.PROTOTYPE_NORM = False
    # What eq. (1) sums for pt^v: "pair" (every image-caption pair, so an image with two captions
    # counts twice, as written) or "image" (every training image once). pt^t always sums pairs.
    _C.MODEL.PROPOT.INIT.IMAGE_COUNT = "pair"
    # Folder of the on-disk cache of the initial prototypes ("" = OUTPUT_DIR). Entries are keyed
    # by the CLIP weights, architecture, input size, datasets and a hash of every training pair.
    _C.MODEL.PROPOT.INIT.CACHE_DIR = ""
    # Batch size of the feature extraction (0: TEST.IMS_PER_BATCH).
    _C.MODEL.PROPOT.INIT.BATCH_SIZE = 0

    # ---------------------------------------------------------------- DPP (eq. 2)
    _C.MODEL.PROPOT.DPP = CN()
    # Domain-conditional prototypical prompting: contexts + self-attention encoder (SAE).
    _C.MODEL.PROPOT.DPP.ENABLED = True
    # K learnable context vectors per prototype and modality (paper: 4).
    _C.MODEL.PROPOT.DPP.CONTEXT_LENGTH = 4
    # Std of the normal initialisation of the context vectors (CoOp: 0.02).
    _C.MODEL.PROPOT.DPP.CONTEXT_INIT_STD = 0.02
    # N_a: number of SAE blocks (paper: 1).
    _C.MODEL.PROPOT.DPP.DEPTH = 1
    # One SAE for both modalities (the paper's parameter count); False: one SAE per modality.
    _C.MODEL.PROPOT.DPP.SHARE_SAE = True

    # ---------------------------------------------------------------- IPP (eqs. 3-4)
    _C.MODEL.PROPOT.IPP = CN()
    # Intra-modal enrichment (eq. 3: image prototypes over image features, text over text).
    _C.MODEL.PROPOT.IPP.INTRA = True
    # Inter-modal enrichment (eq. 4: image prototypes over text features, text over image).
    _C.MODEL.PROPOT.IPP.INTER = True
    # N_e: number of cross-attention decoder (CAD) blocks (paper: 3).
    _C.MODEL.PROPOT.IPP.DEPTH = 3
    # Apply one block DEPTH times (weight tying): fits the paper's parameter count (+3.15M, the
    # weights of one block); its FLOPs do not tell tied from untied blocks. False: DEPTH
    # independent blocks (+9.46M; configs/Propot/ablations/ipp_untied_blocks.yml).
    _C.MODEL.PROPOT.IPP.TIE_BLOCKS = True
    # CAD queries: "initial" (pt, as printed in eqs. 3-4) or "adapted" (the DPP output p_a).
    _C.MODEL.PROPOT.IPP.QUERY = "initial"
    # "shared": one CAD for all four calls (the parameter count); "per_call": one CAD per call.
    _C.MODEL.PROPOT.IPP.SHARING = "shared"
    # Stop the gradient of L_p2i through the CAD keys/values into the encoders.
    _C.MODEL.PROPOT.IPP.DETACH_INSTANCES = False
    # L2-normalise the batch features V_B / T_B before they enter the CAD.
    _C.MODEL.PROPOT.IPP.NORMALIZE_INSTANCES = False

    # ---------------------------------------------------------------- aggregation (eqs. 5-6)
    _C.MODEL.PROPOT.AGGREGATION = CN()
    # "APA" (eqs. 5-6) or a Table-5 variant: "sum", "mean", "mlp", "learned".
    _C.MODEL.PROPOT.AGGREGATION.NAME = "APA"
    # Add the initial prototype to the weighted sum (eq. 6's p = pt + sum_k w_k p_k).
    _C.MODEL.PROPOT.AGGREGATION.RESIDUAL = True
    # APA: temperature of the softmax over the weights w_k = pt . p_k (paper: none, i.e. 1).
    _C.MODEL.PROPOT.AGGREGATION.APA_TAU = 1.0
    # APA: use cosines instead of raw dot products for w_k (paper: raw dot products).
    _C.MODEL.PROPOT.AGGREGATION.APA_NORMALIZE = False
    # "mlp": hidden width of the MLP scoring each candidate prototype.
    _C.MODEL.PROPOT.AGGREGATION.MLP_HIDDEN = 128

    # ---------------------------------------------------------------- L_p2i (eqs. 10-12)
    _C.MODEL.PROPOT.LOSS = CN()
    # lambda_1 of eq. (13) (paper: 0.2).
    _C.MODEL.PROPOT.LOSS.P2I_WEIGHT = 0.2
    # Temperature tau of eqs. (11)-(12) (paper: 0.02, the SDM temperature).
    _C.MODEL.PROPOT.LOSS.P2I_TAU = 0.02
    # Use the log-probability (InfoNCE form); False: the probability, as eqs. (11)-(12) print.
    _C.MODEL.PROPOT.LOSS.P2I_LOG = True
    # Over the identities with instances in the batch: "mean", or "sum" (eq. 10 as printed; its
    # scale grows with the number of identities per batch: about 63.8 expected at batch 64 on
    # CUHK-PEDES with the random sampler, so with both modalities lambda_1 = 0.2 would weigh
    # 2 x 63.8 x 0.2, i.e. about 25.5 InfoNCE terms).
    _C.MODEL.PROPOT.LOSS.P2I_REDUCTION = "mean"
