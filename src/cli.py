"""What every entry point does with user errors: one line naming the problem and the fix, exit code 2."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from src.errors import UserError

T = TypeVar("T")
log = logging.getLogger("lossdiag")


def run_task(task: Callable[[], T]) -> T:
    """Run ``task``; a :class:`UserError` becomes ``error: <message>`` on stderr and exit code 2.

    ``HYDRA_FULL_ERROR=1`` re-raises it with the full traceback, for debugging.
    """
    try:
        return task()
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
