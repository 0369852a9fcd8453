"""Learned estimates for decision points B and C: features, plain-Python serving, and training."""
