"""Converts an image folder tree into sharded TFRecord files, once."""
from pipeline.converter.commands import CONVERT

CONVERT.run()
