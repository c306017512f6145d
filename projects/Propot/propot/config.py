"""Propot config keys (``add_propot_config``) and their validation (``check_propot_config``).

One node per paper module under ``MODEL.PROPOT``: ``BLOCK`` (the attention + FFN block of SAE and
CAD), ``INIT`` (initial prototypes, eq. 1), ``DPP`` (eq. 2), ``IPP`` (eqs. 3-4), ``AGGREGATION``
(eqs. 5-6 and the Table-5 variants) and ``P2I`` (the prototype-to-instance loss, eqs. 10-12).
Every choice the paper (Yan et al., ACM MM 2024) leaves open is a key; the defaults follow the
paper's text where it is explicit and are explained in projects/Propot/README.md otherwise.
"""

from __future__ import annotations

from fastreid.config import CfgNode as CN

from fastreid_ext.config import ConfigValueError, check_choice, check_range, register_config

__all__ = [
    "add_propot_config",
    "check_propot_config",
    "num_candidate_prototypes",
    "LEARNED_AGGREGATIONS",
    "NO_CANDIDATE_AGGREGATIONS",
    "AGGREGATION_NAMES",
    "IMAGE_SUM_CHOICES",
    "DPP_SHARING_CHOICES",
    "IPP_QUERY_CHOICES",
    "IPP_SHARING_CHOICES",
    "P2I_REDUCTIONS",
]

#: ``MODEL.PROPOT.AGGREGATION.NAME``: APA (eqs. 5-6) and the Table-5 variants.
AGGREGATION_NAMES = ("APA", "sum", "mean", "mlp", "learned")
#: ``MODEL.PROPOT.INIT.IMAGE_SUM_OVER``: what eq. (1) sums for the visual prototypes.
IMAGE_SUM_CHOICES = ("pair", "image")
#: ``MODEL.PROPOT.DPP.SHARING``: one SAE for both modalities or one per modality.
DPP_SHARING_CHOICES = ("shared", "per_modality")
#: ``MODEL.PROPOT.IPP.QUERY``: the CAD queries, pt (eqs. 3-4 as printed) or DPP's p_a.
IPP_QUERY_CHOICES = ("initial", "adapted")
#: ``MODEL.PROPOT.IPP.SHARING``: one CAD for the four calls of eqs. (3)-(4) or one per call.
IPP_SHARING_CHOICES = ("shared", "per_call")
#: ``MODEL.PROPOT.P2I.REDUCTION``: over the identities of the batch.
P2I_REDUCTIONS = ("mean", "sum")
#: Aggregations that learn weights over the candidate prototypes: they need a candidate.
LEARNED_AGGREGATIONS = ("mlp", "learned")
#: What ``AGGREGATION.NAME`` allows when no candidate prototype is enabled.
NO_CANDIDATE_AGGREGATIONS = (
    "'APA', 'sum' or 'mean' while no candidate prototype is enabled (MODEL.PROPOT.DPP.ENABLED, "
    "IPP.INTRA.ENABLED and IPP.INTER.ENABLED are all False)"
)


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

    # ---------------------------------------------------------------- SAE/CAD block
    _C.MODEL.PROPOT.BLOCK = CN()
    # Attention heads of every SAE/CAD block (paper Sec. 4.1: 8); divides the feature width d.
    _C.MODEL.PROPOT.BLOCK.NUM_HEADS = 8
    # Width of the FFN of every SAE/CAD block relative to d (4: 2048 for d = 512).
    _C.MODEL.PROPOT.BLOCK.FFN_RATIO = 4
    # Pre-LN blocks (CLIP / IRRA style: x + Attn(LN(x)), x + FFN(LN(x))); False: post-LN.
    _C.MODEL.PROPOT.BLOCK.NORM_FIRST = True
    # Dropout in attention and FFN, in [0, 1) (0 keeps BATCH_IDENTITIES_ONLY bit-for-bit
    # equivalent to the all-N computation).
    _C.MODEL.PROPOT.BLOCK.DROPOUT = 0.0

    # ---------------------------------------------------------------- initial prototypes (eq. 1)
    _C.MODEL.PROPOT.INIT = CN()
    # L2-normalise each instance feature before the per-identity sum (paper: raw features).
    _C.MODEL.PROPOT.INIT.INSTANCE_NORM = False
    # L2-normalise each summed prototype pt_i (paper: the raw sum, whose norm grows with N_i).
    _C.MODEL.PROPOT.INIT.PROTOTYPE_NORM = False
    # What eq. (1) sums for pt^v: "pair" (every image-caption pair, so an image with two captions
    # counts twice, as written) or "image" (every training image once). pt^t always sums pairs.
    _C.MODEL.PROPOT.INIT.IMAGE_SUM_OVER = "pair"
    # Folder of the on-disk cache of the initial prototypes ("" = OUTPUT_DIR). Entries are keyed
    # by the CLIP weights, architecture, input size, datasets and a hash of every training pair.
    _C.MODEL.PROPOT.INIT.CACHE_DIR = ""
    # Total batch of the feature extraction over all processes, as TEST.IMS_PER_BATCH
    # (0: TEST.IMS_PER_BATCH).
    _C.MODEL.PROPOT.INIT.IMS_PER_BATCH = 0

    # ---------------------------------------------------------------- DPP (eq. 2)
    _C.MODEL.PROPOT.DPP = CN()
    # Domain-conditional prototypical prompting: contexts + self-attention encoder (SAE).
    _C.MODEL.PROPOT.DPP.ENABLED = True
    # K: learnable context vectors per prototype and modality (paper: 4). A number of vectors of
    # width d, not a length in tokens (MODEL.CLIP.CONTEXT_LENGTH is the text encoder's 77).
    _C.MODEL.PROPOT.DPP.NUM_CONTEXTS = 4
    # Std of the normal initialisation of the context vectors (CoOp: 0.02).
    _C.MODEL.PROPOT.DPP.CONTEXT_INIT_STD = 0.02
    # N_a: SAE blocks (paper: 1).
    _C.MODEL.PROPOT.DPP.NUM_BLOCKS = 1
    # "shared": one SAE for both modalities (the paper's parameter count); "per_modality": one
    # SAE for the visual and one for the textual prototypes.
    _C.MODEL.PROPOT.DPP.SHARING = "shared"

    # ---------------------------------------------------------------- IPP (eqs. 3-4)
    _C.MODEL.PROPOT.IPP = CN()
    _C.MODEL.PROPOT.IPP.INTRA = CN()
    # Intra-modal enrichment (eq. 3: image prototypes over image features, text over text).
    _C.MODEL.PROPOT.IPP.INTRA.ENABLED = True
    _C.MODEL.PROPOT.IPP.INTER = CN()
    # Inter-modal enrichment (eq. 4: image prototypes over text features, text over image).
    _C.MODEL.PROPOT.IPP.INTER.ENABLED = True
    # N_e: cross-attention decoder (CAD) blocks (paper: 3).
    _C.MODEL.PROPOT.IPP.NUM_BLOCKS = 3
    # Apply one block NUM_BLOCKS times (weight tying): fits the paper's parameter count (+3.15M,
    # the weights of one block); its FLOPs do not tell tied from untied blocks. False: NUM_BLOCKS
    # independent blocks (+9.46M; configs/Propot/ablations/ipp_untied_blocks.yml).
    _C.MODEL.PROPOT.IPP.TIE_BLOCKS = True
    # CAD queries: "initial" (pt, as printed in eqs. 3-4) or "adapted" (the DPP output p_a;
    # needs DPP.ENABLED).
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
    _C.MODEL.PROPOT.AGGREGATION.APA = CN()
    # Temperature of APA's softmax over the weights w_k = pt . p_k (paper: none, i.e. 1).
    _C.MODEL.PROPOT.AGGREGATION.APA.TAU = 1.0
    # APA: cosines instead of raw dot products for w_k (paper: raw dot products).
    _C.MODEL.PROPOT.AGGREGATION.APA.NORMALIZE = False
    _C.MODEL.PROPOT.AGGREGATION.MLP = CN()
    # "mlp": hidden width of the MLP scoring each candidate prototype.
    _C.MODEL.PROPOT.AGGREGATION.MLP.HIDDEN_DIM = 128

    # ---------------------------------------------------------------- L_p2i (eqs. 10-12)
    _C.MODEL.PROPOT.P2I = CN()
    # lambda_1 of eq. (13) (paper: 0.2).
    _C.MODEL.PROPOT.P2I.WEIGHT = 0.2
    # Temperature tau of eqs. (11)-(12) (paper: 0.02, the SDM temperature).
    _C.MODEL.PROPOT.P2I.TAU = 0.02
    # Use the log-probability (InfoNCE form); False: the probability, as eqs. (11)-(12) print.
    _C.MODEL.PROPOT.P2I.LOG = True
    # Over the identities with instances in the batch: "mean", or "sum" (eq. 10 as printed; its
    # scale grows with the number of identities per batch: about 63.8 expected at batch 64 on
    # CUHK-PEDES with the random sampler, so with both modalities lambda_1 = 0.2 would weigh
    # 2 x 63.8 x 0.2, i.e. about 25.5 InfoNCE terms).
    _C.MODEL.PROPOT.P2I.REDUCTION = "mean"


def num_candidate_prototypes(cfg: CN) -> int:
    """Candidate prototypes per identity and modality that the aggregation weighs: p_a (DPP),
    p_en (IPP intra), p_eo (IPP inter), those enabled."""
    c = cfg.MODEL.PROPOT
    return int(c.DPP.ENABLED) + int(c.IPP.INTRA.ENABLED) + int(c.IPP.INTER.ENABLED)


def check_propot_config(cfg: CN) -> None:
    """Raise :class:`~fastreid_ext.config.ConfigValueError` (naming the full key, the value and
    the allowed values) for the first invalid ``MODEL.PROPOT`` value; the values the modules
    need to be consistent with each other are checked here too."""
    c = cfg.MODEL.PROPOT
    key = "MODEL.PROPOT."
    check_range(key + "BLOCK.NUM_HEADS", c.BLOCK.NUM_HEADS, 1)
    check_range(key + "BLOCK.FFN_RATIO", c.BLOCK.FFN_RATIO, 0, open_low=True)
    if not 0 <= c.BLOCK.DROPOUT < 1:  # check_range has no open upper bound
        raise ConfigValueError(key + "BLOCK.DROPOUT", c.BLOCK.DROPOUT, ">= 0 and < 1")
    check_choice(key + "INIT.IMAGE_SUM_OVER", c.INIT.IMAGE_SUM_OVER, IMAGE_SUM_CHOICES)
    check_range(key + "INIT.IMS_PER_BATCH", c.INIT.IMS_PER_BATCH, 0)
    check_range(key + "DPP.NUM_CONTEXTS", c.DPP.NUM_CONTEXTS, 1)
    check_range(key + "DPP.CONTEXT_INIT_STD", c.DPP.CONTEXT_INIT_STD, 0)
    check_range(key + "DPP.NUM_BLOCKS", c.DPP.NUM_BLOCKS, 1)
    check_choice(key + "DPP.SHARING", c.DPP.SHARING, DPP_SHARING_CHOICES)
    check_range(key + "IPP.NUM_BLOCKS", c.IPP.NUM_BLOCKS, 1)
    check_choice(key + "IPP.QUERY", c.IPP.QUERY, IPP_QUERY_CHOICES)
    ipp_enabled = c.IPP.INTRA.ENABLED or c.IPP.INTER.ENABLED
    if ipp_enabled and c.IPP.QUERY == "adapted" and not c.DPP.ENABLED:
        raise ConfigValueError(
            key + "IPP.QUERY", c.IPP.QUERY, "'initial' while MODEL.PROPOT.DPP.ENABLED is False"
        )
    check_choice(key + "IPP.SHARING", c.IPP.SHARING, IPP_SHARING_CHOICES)
    check_choice(key + "AGGREGATION.NAME", c.AGGREGATION.NAME, AGGREGATION_NAMES)
    if c.AGGREGATION.NAME in LEARNED_AGGREGATIONS and num_candidate_prototypes(cfg) == 0:
        raise ConfigValueError(
            key + "AGGREGATION.NAME", c.AGGREGATION.NAME, NO_CANDIDATE_AGGREGATIONS
        )
    check_range(key + "AGGREGATION.APA.TAU", c.AGGREGATION.APA.TAU, 0, open_low=True)
    check_range(key + "AGGREGATION.MLP.HIDDEN_DIM", c.AGGREGATION.MLP.HIDDEN_DIM, 1)
    check_range(key + "P2I.WEIGHT", c.P2I.WEIGHT, 0)
    check_range(key + "P2I.TAU", c.P2I.TAU, 0, open_low=True)
    check_choice(key + "P2I.REDUCTION", c.P2I.REDUCTION, P2I_REDUCTIONS)
