"""Edifice attention and transformer architectures."""
