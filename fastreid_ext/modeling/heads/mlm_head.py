"""IRRA's cross-modal MLM head: text queries attend to image tokens, then a transformer and a
vocabulary classifier predict the masked caption tokens (Implicit Relation Reasoning)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from open_clip.transformer import LayerNorm, QuickGELU, Transformer
from torch import nn

from fastreid_ext.text.tokenizer import VOCAB_SIZE

__all__ = ["CrossModalMLMHead"]


class CrossModalMLMHead(nn.Module):
    """Cross-attention + transformer + MLM classifier of IRRA (``cross_former`` + ``mlm_head``).

    ``scores = mlm_head(ln_post(transformer(cross_attn(q=ln_pre_t(text), k=v=ln_pre_i(image)))))``.
    The cross-attention output has no residual connection (as IRRA); the transformer blocks are
    pre-LN (LN -> self-attention -> residual; LN -> MLP(4D, QuickGELU) -> residual) without
    attention mask; the classifier is Linear(D, D) -> QuickGELU -> LayerNorm -> Linear(D, vocab).
    Sub-module names follow IRRA (``cross_attn``, ``cross_modal_transformer``, ``ln_pre_t``,
    ``ln_pre_i``, ``ln_post``, ``mlm_head.{dense,gelu,ln,fc}``) so its state dicts map one to one.

    Initialisation (IRRA): with ``proj_std = D^-0.5 (2 depth)^-0.5``, attention ``in_proj`` weights
    ~ N(0, D^-0.5), attention ``out_proj`` weights ~ N(0, proj_std), MLP ``c_fc`` ~ N(0, (2D)^-0.5),
    MLP ``c_proj`` ~ N(0, proj_std), classifier ``dense`` ~ N(0, (2D)^-0.5) and ``fc`` ~
    N(0, proj_std); biases and LayerNorms keep PyTorch's defaults.

    Args:
        embed_dim: token width D of both modalities (IRRA: 512).
        num_heads: attention heads of the cross-attention and of every block (divides D).
        depth: number of transformer blocks (IRRA: 4; >= 1).
        vocab_size: size of the predicted vocabulary (CLIP: 49408).
    """

    def __init__(
        self, embed_dim: int, num_heads: int = 8, depth: int = 4, vocab_size: int = VOCAB_SIZE
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads != 0:
            raise ValueError(
                f"CrossModalMLMHead: embed_dim ({embed_dim}) must be a positive multiple of "
                f"num_heads ({num_heads})"
            )
        if depth < 1:
            raise ValueError(f"CrossModalMLMHead: depth must be >= 1, got {depth}")
        if vocab_size < 1:
            raise ValueError(f"CrossModalMLMHead: vocab_size must be >= 1, got {vocab_size}")
        self.embed_dim, self.depth, self.vocab_size = embed_dim, depth, vocab_size

        self.cross_attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.cross_modal_transformer = Transformer(
            width=embed_dim, layers=depth, heads=num_heads, act_layer=QuickGELU, batch_first=True
        )
        self.ln_pre_t = LayerNorm(embed_dim)
        self.ln_pre_i = LayerNorm(embed_dim)
        self.ln_post = LayerNorm(embed_dim)
        self.mlm_head = nn.Sequential(
            OrderedDict(
                [
                    ("dense", nn.Linear(embed_dim, embed_dim)),
                    ("gelu", QuickGELU()),
                    ("ln", LayerNorm(embed_dim)),
                    ("fc", nn.Linear(embed_dim, vocab_size)),
                ]
            )
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw the weights with IRRA's initialisation (see the class docstring)."""
        attn_std = self.embed_dim**-0.5
        proj_std = attn_std * (2 * self.depth) ** -0.5
        fc_std = (2 * self.embed_dim) ** -0.5
        for block in self.cross_modal_transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.cross_attn.in_proj_weight, std=attn_std)
        nn.init.normal_(self.cross_attn.out_proj.weight, std=proj_std)
        nn.init.normal_(self.mlm_head.dense.weight, std=fc_std)
        nn.init.normal_(self.mlm_head.fc.weight, std=proj_std)

    def forward(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Predict vocabulary scores for every text position.

        Args:
            text_tokens: [B, L, D] token features of the (masked) caption from the text encoder.
            image_tokens: [B, N, D] token features of the paired image (all tokens, CLS included).

        Returns:
            [B, L, vocab_size] scores (logits) for every caption position.
        """
        if text_tokens.dim() != 3 or image_tokens.dim() != 3:
            raise ValueError(
                "CrossModalMLMHead: text_tokens and image_tokens must be [B, L, D] and [B, N, D], "
                f"got {tuple(text_tokens.shape)} and {tuple(image_tokens.shape)}"
            )
        if (
            text_tokens.shape[0] != image_tokens.shape[0]
            or text_tokens.shape[2] != self.embed_dim
            or image_tokens.shape[2] != self.embed_dim
        ):
            raise ValueError(
                f"CrossModalMLMHead: expected the same batch size and width D={self.embed_dim}, "
                f"got text {tuple(text_tokens.shape)} and image {tuple(image_tokens.shape)}"
            )
        image = self.ln_pre_i(image_tokens)
        x = self.cross_attn(self.ln_pre_t(text_tokens), image, image, need_weights=False)[0]
        x = self.cross_modal_transformer(x)
        return self.mlm_head(self.ln_post(x))
