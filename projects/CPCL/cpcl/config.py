"""CPCL config keys (``add_cpcl_config``) and their checks (``check_cpcl_config``).

One node per paper module under ``MODEL.CPCL``: PCM and ICPM (the two HCM losses), PMM (the
memories), OPLM (outlier mining), plus CLUSTER (the per-epoch pseudo labels). Keys marked
[design choice] have no public source (CPCL's code is not released) and are documented in
projects/CPCL/README.md ("Design choices").
"""

from __future__ import annotations

from fastreid.config import CfgNode as CN

from fastreid_ext.config import ConfigValueError, check_choice, check_range, register_config

__all__ = [
    "add_cpcl_config",
    "check_cpcl_config",
    "TRAIN_SETS",
    "PCM_NAMES",
    "ICPM_POSITIVES",
    "PMM_UPDATES",
    "OPLM_NAMES",
    "KNN_BACKENDS",
]

# The allowed values of the string keys (each documented at its key below).
TRAIN_SETS = ("either", "both", "all")
PCM_NAMES = ("hybrid", "intra", "cross")
ICPM_POSITIVES = ("image", "text", "either", "instance")
PMM_UPDATES = ("standard", "multi_modal", "hard")
OPLM_NAMES = ("one_stage", "two_stage")
KNN_BACKENDS = ("auto", "faiss", "torch", "hnsw", "ivf")


@register_config
def add_cpcl_config(cfg: CN) -> None:
    """Add the ``MODEL.CPCL.*`` keys to ``cfg`` in place (idempotent)."""
    if "CPCL" in cfg.MODEL:
        return
    _C = cfg
    _C.MODEL.CPCL = CN()
    # Which pairs train in an epoch [design choice]: "either" (a pair is kept when its image or
    # its text is clustered; prototype terms only for labelled modalities), "both" (both
    # clustered, cluster-contrast/CLPC style) or "all" (outliers too: they train through ICPM's
    # i == j positive only). If fewer than one global batch would remain, all pairs are kept.
    _C.MODEL.CPCL.TRAIN_SET = "either"

    _C.MODEL.CPCL.DIAGNOSTICS = CN()
    # Log clustering quality (NMI/ARI against the true identities) every time pseudo labels are
    # computed. The true ids are read by an isolated diagnostic and never reach training.
    _C.MODEL.CPCL.DIAGNOSTICS.ENABLED = False

    # ---------------------------------------------------------------- PCM (HCM, prototypes)
    _C.MODEL.CPCL.PCM = CN()
    # Prototypical contrastive matching against the memories (False: the "without PCM" rows).
    _C.MODEL.CPCL.PCM.ENABLED = True
    # PCM terms [design choice]: "hybrid" (intra-modal image->M^v, text->M^t plus cross-modal
    # text->M^v, image->M^t), "intra" (single-modal PCM) or "cross" (cross-modal terms only).
    _C.MODEL.CPCL.PCM.NAME = "hybrid"
    # Temperature of the prototype logits cos / tau (cluster-contrast "temp").
    _C.MODEL.CPCL.PCM.TAU = 0.05
    # L_PCM = WEIGHT * mean of the terms that have labelled samples in the batch.
    _C.MODEL.CPCL.PCM.WEIGHT = 1.0

    # ---------------------------------------------------------------- ICPM (HCM, instances)
    _C.MODEL.CPCL.ICPM = CN()
    # Instance-level cross-modal projection matching (False: PCM only, configs/CPCL/ablations/
    # icpm_off.yml).
    _C.MODEL.CPCL.ICPM.ENABLED = True
    # Positives of pair i besides itself and the other captions of its image (pairing
    # information, always positives) [design choice]: "image" (same image pseudo label), "text"
    # (same text pseudo label), "either" (any of the two) or "instance" (no pseudo-label
    # positives).
    _C.MODEL.CPCL.ICPM.POSITIVES = "image"
    # tau > 0: logits cos(v_i, t_j) / tau, i.e. IRRA's SDM with pseudo-label positives (as
    # ICPG's CDM and CLPC's NDM; IRRA's tau 0.02) [design choice]; tau == 0: CMPM proper, the
    # projection of the unnormalised image feature on the normalised text feature
    # (configs/CPCL/ablations/icpm_cmpm.yml).
    _C.MODEL.CPCL.ICPM.TAU = 0.02
    # Epsilon inside log(q + eps) of the matching distribution.
    _C.MODEL.CPCL.ICPM.EPS = 1e-8
    # L_ICPM = WEIGHT * (image-to-text + text-to-image KL).
    _C.MODEL.CPCL.ICPM.WEIGHT = 1.0

    # ---------------------------------------------------------------- PMM (memories)
    _C.MODEL.CPCL.PMM = CN()
    # The per-step momentum update of both memories (they are reset to the cluster centroids at
    # every clustering either way).
    _C.MODEL.CPCL.PMM.UPDATE = CN()
    # False keeps the centroids of the last clustering (the "without memory update" ablation).
    _C.MODEL.CPCL.PMM.UPDATE.ENABLED = True
    # Update rule [design choice]: "standard" (every labelled sample of the memory's modality, in
    # batch order), "multi_modal" (also the paired other-modality feature of each pair, under
    # the memory's label) or "hard" (once per cluster in the batch, with its sample least similar
    # to the centroid: cluster-contrast's CM_Hard).
    _C.MODEL.CPCL.PMM.UPDATE.NAME = "standard"
    # Momentum mu of M <- mu * M + (1 - mu) * f (cluster-contrast's run scripts: 0.1).
    _C.MODEL.CPCL.PMM.UPDATE.MOMENTUM = 0.1

    # ---------------------------------------------------------------- per-epoch clustering
    _C.MODEL.CPCL.CLUSTER = CN()
    # k1 of the k-reciprocal Jaccard distance: neighbours per sample, itself included
    # (cluster-contrast's default).
    _C.MODEL.CPCL.CLUSTER.K1 = 30
    # k2 of the Jaccard distance: neighbours averaged by the local query expansion
    # (cluster-contrast's default).
    _C.MODEL.CPCL.CLUSTER.K2 = 6
    # DBSCAN radius on the Jaccard distance, per modality (cluster-contrast's run scripts).
    _C.MODEL.CPCL.CLUSTER.EPS = 0.6
    # DBSCAN core-point neighbour count, the point included (cluster-contrast).
    _C.MODEL.CPCL.CLUSTER.MIN_SAMPLES = 4
    # First epoch with pseudo labels [design choice]: before it no clustering runs, every label is
    # -1 and only the instance-level terms train (ICPM's i == j positive). 0 for pretrained CLIP;
    # a randomly initialised model first needs features worth clustering.
    _C.MODEL.CPCL.CLUSTER.START_EPOCH = 0
    # Re-cluster every this many epochs (1: every epoch). Between re-clusterings the pseudo labels
    # and the memories carry over (and are restored by --resume).
    _C.MODEL.CPCL.CLUSTER.PERIOD = 1
    # Cluster each distinct image once (captions of one image share its features) [design
    # choice]; False clusters one image feature per caption, duplicates included.
    _C.MODEL.CPCL.CLUSTER.DEDUP_IMAGES = True
    # kNN search. Exact (identical labels whichever is chosen): "auto" = "torch" (chunked float32
    # mm + topk, on CUDA when available, float64 only at near-ties) or "faiss" (IndexFlatIP
    # candidates). Approximate, opt-in for very large N: "hnsw" or "ivf" (faiss indexes).
    _C.MODEL.CPCL.CLUSTER.KNN_BACKEND = "auto"
    # HNSW search (and construction) breadth efSearch of KNN_BACKEND "hnsw" (larger: closer to
    # the exact partition, slower).
    _C.MODEL.CPCL.CLUSTER.KNN_HNSW_EF = 128
    # IVF cells searched per query (nprobe) of KNN_BACKEND "ivf", out of 4 * sqrt(N) cells.
    _C.MODEL.CPCL.CLUSTER.KNN_IVF_NPROBE = 128
    # Total batch of the per-epoch feature extraction over all processes, as TEST.IMS_PER_BATCH
    # (0: TEST.IMS_PER_BATCH); each rank encodes IMS_PER_BATCH // world size per step.
    _C.MODEL.CPCL.CLUSTER.IMS_PER_BATCH = 0

    # ---------------------------------------------------------------- OPLM (outlier mining)
    _C.MODEL.CPCL.OPLM = CN()
    # Outlier pseudo-label mining (False: the clusters' labels as DBSCAN leaves them).
    _C.MODEL.CPCL.OPLM.ENABLED = True
    # "one_stage" (both directions from the labels before mining) or "two_stage" (images first,
    # then texts guided by the mined image labels) [design choice: the paper names the two
    # variants without describing them].
    _C.MODEL.CPCL.OPLM.NAME = "one_stage"
    # Assign an outlier only if its best cosine similarity reaches this value; <= -1 disables the
    # threshold [design choice].
    _C.MODEL.CPCL.OPLM.MIN_SIM = -1.0


def check_cpcl_config(cfg: CN) -> None:
    """Raise :class:`ConfigValueError` (full key, value, allowed values) for any bad
    ``MODEL.CPCL`` value, and for ``MODEL.T2I.LOSSES`` that need identities or leave nothing to
    train."""
    c, k = cfg.MODEL.CPCL, "MODEL.CPCL."
    check_choice(k + "TRAIN_SET", c.TRAIN_SET, TRAIN_SETS)
    check_choice(k + "PCM.NAME", c.PCM.NAME, PCM_NAMES)
    check_range(k + "PCM.TAU", c.PCM.TAU, 0.0, open_low=True)
    check_range(k + "PCM.WEIGHT", c.PCM.WEIGHT, 0.0)
    check_choice(k + "ICPM.POSITIVES", c.ICPM.POSITIVES, ICPM_POSITIVES)
    check_range(k + "ICPM.TAU", c.ICPM.TAU, 0.0)
    check_range(k + "ICPM.EPS", c.ICPM.EPS, 0.0)
    check_range(k + "ICPM.WEIGHT", c.ICPM.WEIGHT, 0.0)
    check_choice(k + "PMM.UPDATE.NAME", c.PMM.UPDATE.NAME, PMM_UPDATES)
    check_range(k + "PMM.UPDATE.MOMENTUM", c.PMM.UPDATE.MOMENTUM, 0.0, 1.0)
    cl = c.CLUSTER
    for key in ("K1", "K2", "MIN_SAMPLES", "PERIOD"):
        check_range(f"{k}CLUSTER.{key}", cl[key], 1)
    check_range(k + "CLUSTER.EPS", cl.EPS, 0.0, open_low=True)
    check_range(k + "CLUSTER.START_EPOCH", cl.START_EPOCH, 0)
    check_range(k + "CLUSTER.IMS_PER_BATCH", cl.IMS_PER_BATCH, 0)
    check_choice(k + "CLUSTER.KNN_BACKEND", cl.KNN_BACKEND, KNN_BACKENDS)
    check_range(k + "CLUSTER.KNN_HNSW_EF", cl.KNN_HNSW_EF, 1)
    check_range(k + "CLUSTER.KNN_IVF_NPROBE", cl.KNN_IVF_NPROBE, 1)
    check_choice(k + "OPLM.NAME", c.OPLM.NAME, OPLM_NAMES)
    check_range(k + "OPLM.MIN_SIM", c.OPLM.MIN_SIM, None, 1.0)

    losses = list(cfg.MODEL.T2I.LOSSES)
    if any(name in ("SDM", "ID") for name in losses):
        raise ConfigValueError(
            "MODEL.T2I.LOSSES",
            losses,
            "[] or ['MLM']: SDM and ID need identity labels, which weakly supervised CPCL "
            "does not have (its losses are MODEL.CPCL.PCM / MODEL.CPCL.ICPM)",
        )
    if not (c.PCM.ENABLED or c.ICPM.ENABLED or losses):
        raise ConfigValueError(
            k + "ICPM.ENABLED",
            False,
            "True when MODEL.CPCL.PCM.ENABLED is False and MODEL.T2I.LOSSES is empty "
            "(nothing would train)",
        )
