"""Edifice generative architectures, with their losses and samplers."""
