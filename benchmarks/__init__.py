"""Benchmarks: one command each, the anchor's figure beside Conveyor's, final line ``ratio=…``."""
