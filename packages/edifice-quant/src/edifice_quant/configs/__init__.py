"""Torch-free configs of edifice-quant; each module also declares its entries' ``SPECS``."""
