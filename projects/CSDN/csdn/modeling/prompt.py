"""MsPL: CLIP-ReID-style prompt learner with identity-specific context tokens."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from fastreid_ext.config import ConfigValueError
from fastreid_ext.text import ClipTokenizer

__all__ = ["IdentityPromptLearner"]


class IdentityPromptLearner(nn.Module):
    """Prompt embeddings "A photo of a [c1] [c2] [c3] [c4] person." for identity labels.

    The template is tokenised once; its frozen token embeddings are kept as buffers around the
    positions of the placeholder word "X" (one learnable token per "X"). The identity tokens
    ``cls_ctx [N, n_ctx, W]`` start from N(0, init_std^2); there is no shared context (CLIP-ReID).
    The sequence stops at the EOT token: with CLIP's causal mask the EOT output does not depend
    on later positions, so this equals running the 77-token prompt.

    Args:
        num_classes: N identities.
        token_embedding: CLIP's token embedding ``[vocab, W]`` (read once, not kept).
        template: prompt text with a contiguous run of "X" placeholders.
        init_std: std of the identity tokens' initialisation.
        context_length: tokenizer length (the template must fit).
    """

    def __init__(
        self,
        num_classes: int,
        token_embedding: nn.Embedding,
        template: str = "A photo of a X X X X person.",
        init_std: float = 0.02,
        context_length: int = 77,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"IdentityPromptLearner needs num_classes >= 1, got {num_classes}")
        tokenizer = ClipTokenizer(context_length)
        ids = tokenizer.encode(template)
        placeholder = int(tokenizer.encode("X")[1])
        slots = (ids == placeholder).nonzero().squeeze(1)
        if slots.numel() == 0 or not torch.equal(
            slots, torch.arange(int(slots[0]), int(slots[0]) + slots.numel())
        ):
            raise ConfigValueError(
                "MODEL.CSDN.MSPL.TEMPLATE",
                template,
                "a template with one contiguous run of 'X' placeholders (the identity tokens)",
            )
        eot = int(ids.argmax())
        start, end = int(slots[0]), int(slots[-1]) + 1
        with torch.no_grad():
            embeds = token_embedding(ids[: eot + 1].to(token_embedding.weight.device)).float()
        self.register_buffer("token_prefix", embeds[:start].clone())
        self.register_buffer("token_suffix", embeds[end:].clone())
        self.register_buffer("template_ids", ids[: eot + 1].clone())
        self.eot_index = eot
        self.num_ctx = end - start
        width = embeds.shape[1]
        self.cls_ctx = nn.Parameter(torch.randn(num_classes, self.num_ctx, width) * init_std)

    @property
    def num_classes(self) -> int:
        """Number of identities N."""
        return self.cls_ctx.shape[0]

    def forward(self, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``labels [B]`` -> prompt embeddings ``[B, L, W]`` (L = template length up to EOT) and
        the EOT positions ``[B]`` for ``ClipEncoders.encode_text_embeddings``."""
        b = labels.shape[0]
        ctx = self.cls_ctx[labels.to(self.cls_ctx.device)]
        prompts = torch.cat(
            [self.token_prefix.expand(b, -1, -1), ctx, self.token_suffix.expand(b, -1, -1)], dim=1
        )
        eot = torch.full((b,), self.eot_index, dtype=torch.long, device=prompts.device)
        return prompts, eot
