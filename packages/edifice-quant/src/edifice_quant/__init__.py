"""Edifice adapters and quantization."""
