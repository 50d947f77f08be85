"""StyleGAN-NADA replication: generator, CLIP guidance, losses, layer freezing, training, weights, mini world."""
