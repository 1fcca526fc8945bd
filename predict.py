"""Classifies image files, folders or URLs with a trained model; writes a CSV."""
from model.commands import PREDICT

PREDICT.run()
