"""Metrics: FID/KID, intra-cluster LPIPS, CLIP scores, mini-world ground truth, statistics over seeds."""
