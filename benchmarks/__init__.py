"""Benchmarks of bananas against other Python Redis job queues; run with ``make bench``."""
