"""Training: the one training loop, the checkpoint cache, and the distributed launcher."""
