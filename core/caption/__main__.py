"""`python -m core.caption FOLDER ...`: caption photos from a terminal (core.caption.cli)."""
import sys

from core.caption.cli import main

sys.exit(main())
