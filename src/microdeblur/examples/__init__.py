"""Shipped example images (package data), made by benchmarks/make_example.py."""
