"""Meta-architectures registered in fast-reid's META_ARCH_REGISTRY."""

from .clip_t2i_baseline import ClipTextImageBaseline

__all__ = ["ClipTextImageBaseline"]
