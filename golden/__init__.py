"""The PyTorch golden integer model: the single source of truth for every bit."""
