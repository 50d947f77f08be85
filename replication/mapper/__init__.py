"""Latent mapper for NADA's "mining" step (StyleCLIP-style W+ mapper): model, loss, optimiser, training, checkpoints."""
