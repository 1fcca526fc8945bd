"""The notebook's small CNN and the training loop around it."""
