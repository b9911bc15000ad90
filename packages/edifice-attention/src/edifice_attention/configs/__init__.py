"""Torch-free config dataclasses of the edifice-attention architectures."""
