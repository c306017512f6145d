"""ClipEncoders: CLIP image / text towers with the token-level outputs ReID methods need."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from open_clip.model import CLIP
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

__all__ = ["ClipEncoders", "ImageFeatures", "TextFeatures"]


class ImageFeatures(NamedTuple):
    """Image-tower outputs.

    Attributes:
        global_feat: ``[B, D]`` projected global feature (ViT: CLS token; ResNet: attention pool).
        tokens: ViT: ``[B, 1 + gh*gw, D]`` all tokens after ln_post and projection
            (``tokens[:, 0] == global_feat``); ResNet: None.
        feature_map: ResNet: layer4 output ``[B, C4, h, w]``; ViT: None.
        intermediate: ResNet: layer3 output ``[B, C4 / 2, h3, w3]``; ViT: None.
    """

    global_feat: torch.Tensor
    tokens: Optional[torch.Tensor] = None
    feature_map: Optional[torch.Tensor] = None
    intermediate: Optional[torch.Tensor] = None


class TextFeatures(NamedTuple):
    """Text-tower outputs: ``global_feat [B, D]`` (EOT token) and ``tokens [B, L, D]`` (all tokens,
    after ln_final and the text projection)."""

    global_feat: torch.Tensor
    tokens: torch.Tensor


def _causal_mask(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu_(1)


class ClipEncoders(nn.Module):
    """Wraps an open_clip ``CLIP`` (``self.model``, OpenAI key names) built at a ReID image size.

    The forwards run over the public submodules, so they also work for non-square images, an
    overlapping ViT patch stride and a ResNet with last stride 1 (see :func:`create_clip`).

    Attributes:
        embed_dim: joint embedding size D. text_width / vision_width: tower widths.
        context_length: text positions. image_size: ``(H, W)`` expected input size.
        is_vit: ViT (True) or ModifiedResNet (False) image tower. grid_size: ViT patch grid or
            ResNet layer4 grid ``(h, w)``. arch_name: architecture name.
    """

    def __init__(
        self,
        model: CLIP,
        image_size: tuple[int, int],
        grid_size: tuple[int, int],
        arch_name: str = "",
    ) -> None:
        super().__init__()
        self.model = model
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.arch_name = arch_name
        self.is_vit = not isinstance(model.visual, ModifiedResNet)
        self.context_length = int(model.positional_embedding.shape[0])
        self.text_width = int(model.transformer.width)
        self.embed_dim = int(model.visual.output_dim)
        if self.is_vit:
            self.vision_width = int(model.visual.conv1.out_channels)
        else:
            self.vision_width = int(model.visual.attnpool.k_proj.in_features)
        self.register_buffer("causal_mask", _causal_mask(self.context_length), persistent=False)
        # The ReID losses use a fixed temperature; CLIP's learned logit scale is kept (so weight
        # files load strictly) but frozen, so DDP does not wait for a gradient it never gets.
        if getattr(model, "logit_scale", None) is not None:
            model.logit_scale.requires_grad_(False)

    @property
    def token_embedding(self) -> nn.Embedding:
        """The text token embedding table ``[vocab, text_width]``."""
        return self.model.token_embedding

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype of the image tower."""
        return self.model.visual.conv1.weight.dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`encode_image`: ``[B, 3, H, W] -> [B, D]``."""
        return self.encode_image(images)

    # ------------------------------------------------------------------ image
    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(
                f"CLIP {self.arch_name} was built for images of size {self.image_size} "
                f"(INPUT.SIZE_TRAIN), got {tuple(images.shape[-2:])}"
            )

    def _vit_hidden(self, images: torch.Tensor) -> torch.Tensor:
        v = self.model.visual
        x = v.conv1(images.to(self.dtype)).flatten(2).transpose(1, 2)  # [B, gh*gw, W]
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(v.patch_dropout(x))
        x = v.transformer(x)
        return v.ln_post(x)  # [B, 1 + gh*gw, W]

    def _rn_forward(self, images: torch.Tensor) -> ImageFeatures:
        v = self.model.visual
        x = v.layer2(v.layer1(v.stem(images.to(self.dtype))))
        x3 = v.layer3(x)
        x4 = v.layer4(x3)
        return ImageFeatures(v.attnpool(x4), None, x4, x3)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Global image feature: ``[B, 3, H, W] -> [B, D]`` (ViT: projected CLS after ln_post;
        ResNet: attention-pool output)."""
        self._check_images(images)
        if not self.is_vit:
            return self._rn_forward(images).global_feat
        return self._vit_hidden(images)[:, 0] @ self.model.visual.proj

    def encode_image_tokens(self, images: torch.Tensor) -> ImageFeatures:
        """All image outputs, see :class:`ImageFeatures`. ``images``: ``[B, 3, H, W]``."""
        self._check_images(images)
        if not self.is_vit:
            return self._rn_forward(images)
        tokens = self._vit_hidden(images) @ self.model.visual.proj
        return ImageFeatures(tokens[:, 0], tokens)

    # ------------------------------------------------------------------ text
    def _project_text(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.model.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def _text_hidden(self, embeds: torch.Tensor) -> torch.Tensor:
        if embeds.dim() != 3 or embeds.shape[-1] != self.text_width:
            raise ValueError(
                f"expected text embeddings [B, L, {self.text_width}], got {tuple(embeds.shape)}"
            )
        n = embeds.shape[1]
        if n > self.context_length:
            raise ValueError(f"text length {n} exceeds the context length {self.context_length}")
        m = self.model
        x = embeds + m.positional_embedding[:n].to(embeds.dtype)
        x = m.transformer(x, attn_mask=self.causal_mask[:n, :n])
        return m.ln_final(x)  # [B, L, text_width]

    @staticmethod
    def _gather(x: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        if eot_index.shape != (x.shape[0],):
            raise ValueError(
                f"eot_index must have shape [{x.shape[0]}], got {tuple(eot_index.shape)}"
            )
        return x[torch.arange(x.shape[0], device=x.device), eot_index.to(x.device)]

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """EOT text feature: ``ids [B, L] (L <= context_length, EOT = row argmax) -> [B, D]``."""
        x = self._text_hidden(self.model.token_embedding(ids))
        return self._project_text(self._gather(x, ids.argmax(dim=-1)))

    def encode_text_tokens(self, ids: torch.Tensor) -> TextFeatures:
        """All text outputs for token ids ``[B, L]``: global ``[B, D]`` and tokens ``[B, L, D]``."""
        return self.encode_text_embeddings(self.model.token_embedding(ids), ids.argmax(dim=-1))

    def encode_text_embeddings(self, embeds: torch.Tensor, eot_index: torch.Tensor) -> TextFeatures:
        """Text tower from token embeddings (prompt learners such as CoOp / CLIP-ReID stage 1).

        Args:
            embeds: ``[B, L, text_width]`` token embeddings, L <= context_length; the position
                embedding is added here and the causal mask is applied.
            eot_index: ``[B]`` LongTensor, position of each row's EOT token.

        Returns:
            :class:`TextFeatures` with ``global_feat [B, D]`` (at eot_index) and ``tokens [B, L, D]``.
        """
        tokens = self._project_text(self._text_hidden(embeds))
        return TextFeatures(self._gather(tokens, eot_index), tokens)
