"""CLIP backbones for ReID on open_clip: architectures as JSON, local weights, token outputs.

Public API:
    create_clip(name, image_size, weights="", random_init=False, quick_gelu=True, vit_stride=0,
        rn_last_stride_1=False, context_length=77) -> ClipEncoders
    ClipEncoders: encode_image, encode_image_tokens, encode_text, encode_text_tokens,
        encode_text_embeddings; ImageFeatures, TextFeatures (their outputs)
    list_architectures(), load_architecture(name)
    read_clip_state_dict(path), resize_grid_pos_embed(pos, grid), vit_grid_size, resnet_grid_size
    ClipArchitectureError, ClipWeightsError (both ValueError)
    build_clip_backbone(cfg): registered in fast-reid's BACKBONE_REGISTRY on import.
"""

from .architectures import ClipArchitectureError, list_architectures, load_architecture
from .backbone import build_clip_backbone
from .encoders import ClipEncoders, ImageFeatures, TextFeatures
from .factory import create_clip, resnet_grid_size, vit_grid_size
from .weights import ClipWeightsError, read_clip_state_dict, resize_grid_pos_embed

__all__ = [
    "ClipArchitectureError",
    "ClipEncoders",
    "ClipWeightsError",
    "ImageFeatures",
    "TextFeatures",
    "build_clip_backbone",
    "create_clip",
    "list_architectures",
    "load_architecture",
    "read_clip_state_dict",
    "resize_grid_pos_embed",
    "resnet_grid_size",
    "vit_grid_size",
]
