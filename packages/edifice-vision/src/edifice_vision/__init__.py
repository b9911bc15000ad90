"""Edifice vision, convolutional and detection architectures."""
