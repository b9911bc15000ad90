"""Test fixture: a third-party Edifice plugin with one architecture, ``toy_mixer``."""
