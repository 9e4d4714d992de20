"""The captioning engine, no Streamlit here. Its packages and the rule of which may import torch: docs/architecture.md."""
import os

# The engine shares the CPU with itself (image-loading threads beside the encoder) and with other processes
# (a background training run beside the app). OpenMP's default busy-waiting then burns the contended cores:
# measured on 2 busy cores, 1.5 s per training step with passive waiting against 4-6 s without. It must be
# set before torch loads OpenMP, so here, the first module of the package to be imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
