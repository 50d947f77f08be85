"""Run outputs and the long-format scores table that every figure reads."""
