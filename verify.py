"""Checks a records folder written by convert.py: files, checksums, counts, images, labels."""
from pipeline.commands import VERIFY

VERIFY.run()
