"""`python -m core.device [--json]`: what this computer has for PyTorch, and why a GPU goes unused."""
import sys

from core.device.report import main

sys.exit(main())
