"""Readers that turn NVIDIA (TF, stylegan2-ada-pytorch) and rosinality StyleGAN2 weights into our state dicts."""
