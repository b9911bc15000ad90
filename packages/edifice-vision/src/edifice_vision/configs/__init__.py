"""Torch-free configs of edifice-vision; each module also declares its architectures' ``SPECS``."""
