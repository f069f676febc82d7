"""Batch engine for each stage."""
