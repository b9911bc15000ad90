"""Torch-free configs of edifice-recurrent; each module also declares its architectures' ``SPECS``."""
