"""Evaluates a trained model on one split of its records: per-class metrics and its mistakes."""
from model.commands import EVALUATE

EVALUATE.run()
