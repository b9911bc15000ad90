"""Torch-free configs of edifice-generative; each module also declares its architectures' ``SPECS``."""
