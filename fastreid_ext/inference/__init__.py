"""Inference API: load a trained model from ``config + weights``, encode images and captions, and
index a gallery for search.

Public contract (stable; later versions may add, never rename)::

    from fastreid_ext.inference import Predictor, GalleryIndex, build_gallery_index

    p = Predictor.from_config(config_file, weights=None, opts=(), device="auto", amp=None)
    p.cfg            # frozen CfgNode (MODEL.WEIGHTS, MODEL.DEVICE, MODEL.HEADS.NUM_CLASSES set)
    p.task           # "text-image" (Baseline / Propot / CPCL) or "visible-infrared" (CSDN)
    p.method         # MODEL.META_ARCHITECTURE, e.g. "PropotT2I"
    p.config_file, p.weights, p.opts   # what was loaded (absolute paths; the overrides given)
    p.model, p.device, p.image_transform   # the eval-mode model, its device, the test transform
    p.fingerprint    # 16 hex digits: sha256 of the config dump (without device / path keys)
                     # and of the weights file's bytes
    p.encode_images(images, modality=None, batch_size=64, progress=True, num_workers=None)
        # images: paths / PIL images, or a tensor [N, 3, H, W] already transformed (pixel values
        # in [0, 255] at INPUT.SIZE_TEST); modality "visible" | "infrared" is required for CSDN
        # and refused for text-image methods -> [N, D] float32 CPU, L2-normalised
    p.encode_texts(texts, batch_size=256, progress=True)   # text-image methods only -> [N, D]

    index = build_gallery_index(p, "some/folder")                     # recursively, exact index
    index = build_gallery_index(p, dataset="CUHKPEDES", split="test", kind="ivf")
    index.search(queries [Q, D], k) -> (scores [Q, k] float32, ids [Q, k] int64)   # torch
    index.paths      # absolute image path per row
    index.roots      # absolute folders the images were taken from
    index.pids       # identity per row (dataset splits) or None
    index.camids, index.modality   # per row for visible-infrared dataset splits, else None
    index.meta       # config_file, weights, opts, fingerprint, method, task, kind ("flat" |
                     # "ivf" | "hnsw"), dim, ntotal, params, source, created, ...
    index.features(ids=None)   # stored features [len(ids), D]
    index.save(folder); GalleryIndex.load(folder)   # atomic files; load refuses a folder whose
                                                    # files disagree, naming the file

What the features are: the evaluator's own (:mod:`fastreid_ext.evaluation.features`): the same
test transform, tokenizer, model forward and L2 normalisation, so on the CPU they equal the
features the evaluator ranks with, bit for bit. On CUDA with ``amp`` (default there) the forward
runs under autocast (``SOLVER.AMP.DTYPE``), within rounding of the evaluator's float32 features.

Loading needs no training set: the training-class count is read from the checkpoint (every
training run stores it) or inferred from its tensor shapes for older checkpoints; CLIP's
pretrained weights (``MODEL.CLIP.WEIGHTS``) are not read, the checkpoint holds every tensor.
"""

from .build import build_gallery_index, encode_source, resolve_source
from .faiss_index import KINDS, build_faiss_index
from .index import GalleryIndex, IndexFolderError
from .loading import TEXT_IMAGE, VISIBLE_INFRARED, load_trained_model
from .predictor import MODALITIES, Predictor
from .sources import ImageSource, dataset_source, folder_source, paths_source

__all__ = [
    "Predictor",
    "GalleryIndex",
    "IndexFolderError",
    "build_gallery_index",
    "build_faiss_index",
    "encode_source",
    "resolve_source",
    "load_trained_model",
    "ImageSource",
    "dataset_source",
    "folder_source",
    "paths_source",
    "KINDS",
    "MODALITIES",
    "TEXT_IMAGE",
    "VISIBLE_INFRARED",
]
