"""`python -m core.train --data DATASET [--flags]`: the trainer's command line (core.train.trainer)."""
import os
import sys

from core.base.paths import JOB_LOCK_ENV
from core.runs.jobs import JobError, hold_job_lock

# A job's trainer takes the job lock before the slow imports (torch): its starter (core.runs.jobs) waits on it.
try:
    if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 holds it for the whole run
        hold_job_lock()
    else:
        os.environ.pop(JOB_LOCK_ENV, None)
except JobError as e:
    sys.exit(f"training not started: {e}")

from core.train.trainer import main  # noqa: E402 (after the lock)

sys.exit(main())
