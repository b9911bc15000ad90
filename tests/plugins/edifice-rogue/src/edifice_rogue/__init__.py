"""Test fixture: a third-party plugin whose ``mamba`` clashes with edifice-ssm's."""
