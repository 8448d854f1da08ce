"""Shipped weights (package data); see weights.default_weights_path()."""
