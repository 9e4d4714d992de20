"""`python -m core.evaluate --data DATASET`: score a model on a dataset's split (core.evaluate.run)."""
import sys

from core.evaluate.run import main

sys.exit(main())
