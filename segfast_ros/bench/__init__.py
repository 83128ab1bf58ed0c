"""Benchmarks: each prints a table and writes JSON, and times through the public API.

``segfast bench`` and ``segfast bench-segevery`` (:mod:`.latency`), ``segfast bench-node``
(:mod:`.node`), ``segfast bench-memory`` (:mod:`.memory`) and ``segfast bench-replay``
(:mod:`.replay`).
"""
