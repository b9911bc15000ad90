"""Fused Triton kernels for Edifice's hot ops (overrides of ``edifice.ops``, imported lazily)."""
