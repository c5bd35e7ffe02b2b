"""What every entry point does with user errors: one line naming the problem and the fix, exit code 2."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from src.errors import UserError
from src.sweep import in_multirun

T = TypeVar("T")
log = logging.getLogger("lossdiag")


def run_task(task: Callable[[], T]) -> T:
    """Run ``task``; a :class:`UserError` becomes ``error: <message>`` on stderr and exit code 2.

    ``HYDRA_FULL_ERROR=1`` re-raises it with the full traceback, for debugging. Inside a multirun
    the error is logged (into the job's ``train.log``) and re-raised as an ordinary exception:
    Hydra then marks only this job failed and runs the others (``SystemExit`` would end the sweep).
    """
    try:
        return task()
    except UserError as err:
        if in_multirun():
            log.error("error: %s", err)
            raise
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
