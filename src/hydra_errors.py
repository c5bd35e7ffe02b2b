"""Hydra's own errors (unknown group option, unknown key, unparsable override) as one line.

Hydra prints these as several lines (search path, hint to set ``HYDRA_FULL_ERROR``) and exits 1.
:func:`one_line_hydra_errors` makes them ``error: <what is wrong>: <how to fix it>`` on stderr
and exit code 2, like :class:`src.errors.UserError`. Anything else keeps Hydra's own report (e.g.
an added key a class does not take, ``+trainer.foo=1``, fails inside the job: in a sweep that must
stay a failed job, see :mod:`src.sweep`).
``HYDRA_FULL_ERROR=1`` still re-raises with the full traceback.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException


def describe(err: Exception, entry: str = "src.train") -> str:
    """One line for a Hydra config error: what is wrong, and how to fix it."""
    if isinstance(err, MissingConfigException) and err.options is not None and err.missing_cfg_file:
        group, _, choice = err.missing_cfg_file.rpartition("/")
        options = sorted(err.options)
        close = difflib.get_close_matches(choice, options, n=1)
        hint = f" (did you mean {group}={close[0]}?)" if close else ""
        return f"{group}={choice} is not an option of '{group}': choose one of {', '.join(options)}{hint}"
    text = str(err)
    unknown = re.match(r"Could not override '([^']+)'", text)
    if unknown and "not in struct" in str(err.__cause__ or ""):
        key = unknown.group(1)
        return (
            f"unknown config key '{key}': check its spelling (python -m {entry} --cfg job lists every key), "
            f"or add a new key with +{key}=..."
        )
    lines = [line.strip().rstrip(":") for line in text.splitlines() if line.strip()]
    if err.__cause__ is not None:
        lines.append(str(err.__cause__).splitlines()[0])
    if isinstance(err, OverrideParseException):
        return "cannot parse the command-line override: " + "; ".join(lines)
    return "; ".join(lines)


def _report_in_one_line(original: Callable[[Callable[[], Any]], Any], entry: str) -> Callable[..., Any]:
    def run_and_report(func: Callable[[], Any]) -> Any:
        def guarded() -> Any:
            try:
                return func()
            except (ConfigCompositionException, OverrideParseException) as err:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print(f"error: {describe(err, entry)}", file=sys.stderr)
                raise SystemExit(2) from None

        return original(guarded)

    return run_and_report


@contextmanager
def one_line_hydra_errors(entry: str = "src.train") -> Iterator[None]:
    """Within this block, Hydra config errors print one line and exit 2 (see the module docstring).

    Hydra 1.3 routes every run, multirun and ``--cfg`` through ``hydra._internal.utils.run_and_report``;
    it is wrapped here (and restored afterwards), not replaced.
    """
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report
    hydra_utils.run_and_report = _report_in_one_line(original, entry)
    try:
        yield
    finally:
        hydra_utils.run_and_report = original
