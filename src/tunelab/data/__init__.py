"""Data: sources (files, built-ins) → rows → examples of a known shape → token sequences."""
