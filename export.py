"""Writes a trained model as a SavedModel that takes encoded images."""
from model.commands import EXPORT

EXPORT.run()
