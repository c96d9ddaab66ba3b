"""Weights: the PyTorch parameter table, the key formats recognised, PyTorch / safetensors
files, and loading a network from a workdir, a checkpoint or a file."""
