"""Benchmarks: `make bench` (or `python -m benchmarks [spine] [serving] [containers]`)."""
