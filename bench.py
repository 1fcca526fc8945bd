"""Measures input throughput: ImageDataGenerator vs tf.data vs this pipeline."""
from benchmark.commands import BENCH

BENCH.run()
