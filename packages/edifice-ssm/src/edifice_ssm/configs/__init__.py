"""Torch-free configs of edifice-ssm; each module also declares its architectures' ``SPECS``."""
