"""Messages for the person at the console, written once to wherever the program's logging goes.

Under ``python -m src.train`` Hydra's logging sends an INFO record to the console and to ``train.log``;
used as a plain library (no logging configured, or INFO not enabled) the text is printed instead, so
a drop-in callback's verdict is never lost.
"""

from __future__ import annotations

import logging


def announce(log: logging.Logger, text: str) -> None:
    """``text`` as an INFO record of ``log`` when someone handles those, else on stdout."""
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        log.info(text)
    else:
        print(text, flush=True)
