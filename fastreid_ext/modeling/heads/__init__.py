"""Heads of the text-image models (IRRA's cross-modal MLM head)."""

from .mlm_head import CrossModalMLMHead

__all__ = ["CrossModalMLMHead"]
