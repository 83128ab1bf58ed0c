"""Benchmarks: each prints a table and writes JSON, and times through the public API.

The commands and their flags are in :mod:`.commands` (``cli.py`` only calls it):
``segfast bench`` and ``segfast bench-segevery`` (:mod:`.latency`), ``segfast bench-node``
(:mod:`.node`), ``segfast bench-memory`` (:mod:`.memory`, each case in a fresh process:
:mod:`.memory_case`) and ``segfast bench-replay`` (:mod:`.replay`).

What they share: one way to time (:mod:`.timing`), one table formatter and JSON writer
(:mod:`.report`), one frame generator (:mod:`.scenes`, also the tests', the sample bag's and the
demo model's), the synthetic fixed-box detector (:mod:`.synthetic_detector`), and the model
flags that give every ``segfast`` command its backend (:mod:`.backend_args`).
"""
