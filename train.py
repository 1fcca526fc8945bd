"""Trains the notebook's CNN on records written by convert.py."""
from model.commands import TRAIN

TRAIN.run()
