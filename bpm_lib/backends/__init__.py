"""Swappable model backends; importing this package registers the built-in ones."""
