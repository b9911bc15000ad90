"""Edifice state-space and hybrid architectures."""
