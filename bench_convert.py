"""Conversion at scale: a large folder converted against the decode rate, and memory."""
from benchmark.commands import BENCH_CONVERT

BENCH_CONVERT.run()
