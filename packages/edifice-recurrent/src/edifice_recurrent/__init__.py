"""Edifice recurrent, liquid and neuromorphic architectures."""
