"""Model bundles on disk (safetensors + JSON): read, check, list, publish, join. Torch-free (the weights become a
model in core.nn.weights)."""
