"""Writes the small, deterministic, photo-like sample the quick start trains on."""
from pipeline.converter.commands import SAMPLE

SAMPLE.run()
