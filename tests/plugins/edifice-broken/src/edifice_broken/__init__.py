"""Test fixture: an Edifice plugin distribution whose entry point fails to import."""
