"""IRRA masked-language-modelling corruption of CLIP token ids (15% selection, 80/10/10 split)."""

from __future__ import annotations

import torch

from .tokenizer import MASK_ID

__all__ = ["MLM_IGNORE_INDEX", "mask_tokens"]

#: Label of positions the MLM loss ignores (IRRA uses 0, which is also the padding id).
MLM_IGNORE_INDEX = 0

# Probabilities of the three outcomes for a selected token (IRRA / BERT).
_P_MASK = 0.8
_P_RANDOM = 0.1


def mask_tokens(
    ids: torch.Tensor, generator: torch.Generator, prob: float = 0.15
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt caption ids for MLM exactly as IRRA's ``_build_random_masked_tokens_and_labels``.

    * Eligible tokens are ``0 < t < MASK_ID``: SOT, EOT, padding and the mask itself never are.
    * Each eligible token is selected independently with probability ``prob``. A selected token
      becomes ``MASK_ID`` with probability 0.8, a uniformly random id in ``[1, MASK_ID - 1]`` =
      ``[1, 49404]`` with probability 0.1 (possibly its own id), and stays unchanged with
      probability 0.1. Its label is its original id; every other label is ``MLM_IGNORE_INDEX`` (0).
    * At least one token per sequence: if nothing was selected in a sequence, one eligible token is
      replaced by ``MASK_ID`` (always the mask, as IRRA) and labelled — position 1 (the first
      caption token after SOT, what IRRA forces) when it is eligible, otherwise the first eligible
      position.
    * Design choice: a sequence with no eligible token at all (an empty caption ``[SOT, EOT, 0...]``)
      is returned unchanged with all labels 0, so it contributes nothing to the MLM loss. IRRA
      would label position 1 there (the EOT), i.e. train the model to predict EOT.

    The computation is vectorised over the batch. Random numbers are drawn from ``generator`` in a
    fixed order (three [B, L] draws), so the result is a deterministic function of the generator
    state; they are drawn on the generator's device and moved to ``ids.device``.

    Args:
        ids: LongTensor[L] or LongTensor[B, L] of token ids (from :class:`ClipTokenizer`).
        generator: source of randomness (e.g. one seeded generator per DataLoader worker).
        prob: selection probability of an eligible token, in [0, 1] (IRRA: 0.15).

    Returns:
        ``(masked_ids, labels)``, both LongTensor with the shape of ``ids``.
    """
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long:
        got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"mask_tokens: ids must be a LongTensor, got {got}")
    if ids.dim() not in (1, 2):
        raise ValueError(f"mask_tokens: ids must be [L] or [B, L], got shape {tuple(ids.shape)}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"mask_tokens: generator must be a torch.Generator, got {type(generator).__name__}"
        )
    if not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"mask_tokens: prob must be in [0, 1], got {prob}")

    single = ids.dim() == 1
    x = ids.unsqueeze(0) if single else ids
    shape, rng = x.shape, generator.device
    u_select = torch.rand(shape, generator=generator, device=rng).to(x.device)
    u_action = torch.rand(shape, generator=generator, device=rng).to(x.device)
    random_ids = torch.randint(1, MASK_ID, shape, generator=generator, device=rng).to(x.device)

    eligible = (x > 0) & (x < MASK_ID)
    selected = eligible & (u_select < prob)
    to_mask = selected & (u_action < _P_MASK)
    to_random = selected & (u_action >= _P_MASK) & (u_action < _P_MASK + _P_RANDOM)

    # At-least-one rule, for sequences with eligible tokens but no selection.
    forced = eligible.any(dim=1) & ~selected.any(dim=1)
    first_eligible = eligible.int().argmax(dim=1)  # index of the first True
    if x.shape[1] > 1:
        first_eligible = torch.where(eligible[:, 1], 1, first_eligible)
    force_pos = torch.zeros_like(eligible)
    force_pos[torch.arange(x.shape[0], device=x.device), first_eligible] = True
    force_pos &= forced.unsqueeze(1)
    selected |= force_pos
    to_mask |= force_pos

    masked = torch.where(to_random, random_ids, x)
    masked = torch.where(to_mask, torch.full_like(x, MASK_ID), masked)
    labels = torch.where(selected, x, torch.full_like(x, MLM_IGNORE_INDEX))
    if single:
        return masked.squeeze(0), labels.squeeze(0)
    return masked, labels
