"""``PropotInitialPrototypeHook``: fills the initial prototypes (eq. 1) before training."""

from __future__ import annotations

import logging
from typing import Optional

from fastreid.config import CfgNode
from fastreid.engine.train_loop import HookBase

from fastreid_ext.data.text_image import dataset_root
from fastreid_ext.engine.distributed import unwrap_model
from fastreid_ext.registry import HOOK_REGISTRY

from .initial_prototypes import (
    digest_to_fingerprint,
    load_or_compute_initial_prototypes,
    training_data_digest,
)

__all__ = ["PropotInitialPrototypeHook"]

logger = logging.getLogger(__name__)


@HOOK_REGISTRY.register()
class PropotInitialPrototypeHook(HookBase):
    """Before the first step, encode every training pair with the (still pretrained) CLIP
    encoders and store the per-identity sums pt^v, pt^t in the model's ``prototypes`` buffers.

    Runs after ``resume_or_load``. When the model already holds initialised prototypes (a resumed
    run, or ``MODEL.WEIGHTS`` from a Propot checkpoint) made from the same training data (the
    ``prototypes.data_fingerprint`` buffer matches a hash of the pairs and labels) nothing is
    computed. A checkpoint made for other data (another fingerprint; or another number of
    identities, whose tensors are not loaded) is recomputed with a warning; one without a
    fingerprint (0) is used as it is, with a warning. Otherwise the on-disk cache
    (``MODEL.PROPOT.INIT.CACHE_DIR``) is used when it matches (rank 0 reads it and shares the
    tensors, or its error, with every rank), else all ranks extract their shard and end with
    identical tensors. ``source`` records what happened: "checkpoint",
    "cache", "computed", or "disabled" (``MODEL.PROPOT.ENABLED False``).
    """

    def __init__(self, cfg: CfgNode, trainer) -> None:
        self.cfg = cfg
        self.source: Optional[str] = None

    def before_train(self) -> None:
        model = unwrap_model(self.trainer.model)
        if not getattr(model, "propot_enabled", False):
            self.source = "disabled"
            return
        protos = model.prototypes
        train_set = self.trainer.train_set
        if not (hasattr(train_set, "pairs") and hasattr(train_set, "labels")):
            raise TypeError(
                "PropotInitialPrototypeHook needs a training set with 'pairs' and 'labels' "
                f"(TextImageTrainSet), got {type(train_set).__name__}"
            )
        digest = training_data_digest(
            train_set.pairs, train_set.labels, protos.num_ids, dataset_root(self.cfg)
        )
        fingerprint = digest_to_fingerprint(digest)
        if bool(protos.initialized):
            stored = int(protos.data_fingerprint)
            if stored == fingerprint:
                self.source = "checkpoint"
                logger.info("Propot initial prototypes come from the loaded checkpoint")
                return
            if stored == 0:
                self.source = "checkpoint"
                logger.warning(
                    "Propot initial prototypes come from the loaded checkpoint, which has no "
                    "prototypes.data_fingerprint: they cannot be checked against this training set"
                )
                return
            logger.warning(
                "The loaded Propot initial prototypes were computed from other training data "
                "(prototypes.data_fingerprint %d, this training set %d): recomputing them",
                stored,
                fingerprint,
            )
        pt_v, pt_t, self.source = load_or_compute_initial_prototypes(
            model, train_set.pairs, train_set.labels, protos.num_ids, self.cfg, data_sha1=digest
        )
        protos.set_initial(
            pt_v.to(protos.initial_v.device), pt_t.to(protos.initial_t.device), fingerprint
        )
