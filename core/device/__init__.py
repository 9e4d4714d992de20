"""The computer: which PyTorch build fits it (core.device.build, run before torch exists) and what PyTorch can use
of it (`python -m core.device`). Torch-free at import."""
