"""CPCL config keys (``add_cpcl_config``). Keys marked [design choice] have no public source
(CPCL's code is not released; text-reid.md §2.3) and are documented in projects/CPCL/README.md."""

from __future__ import annotations

from fastreid.config import CfgNode as CN

from fastreid_ext.config import register_config

__all__ = ["add_cpcl_config"]


@register_config
def add_cpcl_config(cfg: CN) -> None:
    """Add the ``CPCL.*`` keys to ``cfg`` in place (idempotent)."""
    if "CPCL" in cfg:
        return
    _C = cfg
    _C.CPCL = CN()
    # Losses of hybrid-level cross-modal matching (HCM): any of "PCM" (prototypical contrastive
    # matching against the memories) and "ICPM" (instance-level cross-modal projection matching).
    _C.CPCL.LOSSES = ["PCM", "ICPM"]
    # Which pairs train in an epoch [design choice]: "either" (a pair is kept when its image or
    # its text is clustered; prototype terms only for labelled modalities), "both" (both
    # clustered, cluster-contrast/CLPC style) or "all" (outliers too: they train through ICPM's
    # i == j positive only). If fewer than one global batch would remain, all pairs are kept.
    _C.CPCL.TRAIN_SET = "either"
    # Log clustering quality (NMI/ARI against the true identities) every time pseudo labels are
    # computed. The true ids are read by an isolated diagnostic and never reach training.
    _C.CPCL.DIAGNOSTICS = False

    _C.CPCL.PCM = CN()
    # PCM terms [design choice]: "hybrid" (intra-modal image->M^v, text->M^t plus cross-modal
    # text->M^v, image->M^t), "intra" (single-modal PCM) or "cross" (cross-modal terms only).
    _C.CPCL.PCM.MODE = "hybrid"
    # Temperature of the prototype logits cos / tau (cluster-contrast "temp").
    _C.CPCL.PCM.TAU = 0.05
    # L_PCM = WEIGHT * mean of the terms that have labelled samples in the batch.
    _C.CPCL.PCM.WEIGHT = 1.0

    _C.CPCL.ICPM = CN()
    # Positives of pair i besides itself and the other captions of its image (pairing
    # information, always positives) [design choice]: "image" (same image pseudo label), "text"
    # (same text pseudo label), "either" (any of the two) or "instance" (no pseudo-label
    # positives).
    _C.CPCL.ICPM.POSITIVES = "image"
    # tau > 0: logits cos(v_i, t_j) / tau, i.e. IRRA's SDM with pseudo-label positives (the
    # "equivalent alternative" of text-reid.md §2.3, as ICPG's CDM / CLPC's NDM; tau_inst 0.02);
    # tau == 0: CMPM proper, the projection of the unnormalised image feature on the normalised
    # text feature (configs/CPCL/ablations/icpm_cmpm.yml).
    _C.CPCL.ICPM.TAU = 0.02
    # Epsilon inside log(q + eps) of the matching distribution.
    _C.CPCL.ICPM.EPS = 1e-8
    _C.CPCL.ICPM.WEIGHT = 1.0

    _C.CPCL.PMM = CN()
    # Momentum mu of the memory update M <- mu * M + (1 - mu) * f (cluster-contrast scripts: 0.1).
    _C.CPCL.PMM.MOMENTUM = 0.1
    # Momentum-update the memories after every step; False keeps the epoch's initial centroids
    # (the "without memory update" ablation).
    _C.CPCL.PMM.UPDATE = True
    # Update rule [design choice, text-reid.md §2.3]: "standard" (every labelled sample of the
    # memory's modality, in batch order), "multi_modal" (also the paired other-modality feature
    # of each pair, under the memory's label) or "hard" (once per cluster in the batch, with its
    # sample least similar to the centroid: cluster-contrast's CM_Hard).
    _C.CPCL.PMM.MODE = "standard"

    _C.CPCL.CLUSTER = CN()
    # k-reciprocal Jaccard distance parameters (cluster-contrast defaults).
    _C.CPCL.CLUSTER.K1 = 30
    _C.CPCL.CLUSTER.K2 = 6
    # DBSCAN on the Jaccard distance, per modality.
    _C.CPCL.CLUSTER.EPS = 0.6
    _C.CPCL.CLUSTER.MIN_SAMPLES = 4
    # First epoch with pseudo labels [design choice]: before it no clustering runs, every label is
    # -1 and only the instance-level terms train (ICPM's i == j positive). 0 for pretrained CLIP;
    # a randomly initialised model first needs features worth clustering.
    _C.CPCL.CLUSTER.START_EPOCH = 0
    # Re-cluster every this many epochs (1: every epoch). Between re-clusterings the pseudo labels
    # and the memories carry over (and are restored by --resume).
    _C.CPCL.CLUSTER.PERIOD = 1
    # Cluster each distinct image once (captions of one image share its features) [design
    # choice]; False clusters one image feature per caption, duplicates included.
    _C.CPCL.CLUSTER.DEDUP_IMAGES = True
    # kNN search: "auto" (torch on CUDA, else faiss on CPU), "faiss" or "torch".
    _C.CPCL.CLUSTER.KNN_BACKEND = "auto"
    # Per-rank batch size of the per-epoch feature extraction; 0 falls back to
    # TEST.IMS_PER_BATCH // world size (TEST.IMS_PER_BATCH is global, this key is not).
    _C.CPCL.CLUSTER.BATCH_SIZE = 0

    _C.CPCL.OPLM = CN()
    # Outlier pseudo-label mining: "off", "one_stage" (both directions from the labels before
    # mining) or "two_stage" (images first, then texts guided by the mined image labels)
    # [design choice: the paper's two variants are not described].
    _C.CPCL.OPLM.MODE = "one_stage"
    # Assign an outlier only if its best cosine similarity reaches this value; <= -1 disables the
    # threshold [design choice].
    _C.CPCL.OPLM.MIN_SIM = -1.0
