"""Runs a tf.data service dispatcher or worker: what the CPU hosts run."""
from pipeline.reader.commands import DATA_SERVICE

DATA_SERVICE.run()
