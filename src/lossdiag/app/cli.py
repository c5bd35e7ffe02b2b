"""What every entry point does with user errors: one line naming the problem and the fix, exit code 2.

Two sources: our own :class:`~lossdiag.errors.UserError` (:func:`run_task`) and Hydra's config errors
(unknown group option, unknown key, unparsable override; :func:`one_line_hydra_errors`), which Hydra
would print as several lines with exit code 1.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

from lossdiag.app.resolvers import in_multirun
from lossdiag.app.resume import override_key, quote
from lossdiag.errors import UserError, user_error_cause

# config keys whose values are folders or files. A run folder's name holds "=" (``10-26-53_loss=bounded``),
# which Hydra's override syntax would read as syntax: such values are quoted before Hydra parses them
PATH_KEYS = frozenset({"ckpt_path", "data.root", "hydra.run.dir", "hydra.sweep.dir", "paths.output_dir"})

T = TypeVar("T")
log = logging.getLogger("lossdiag")


def run_task(task: Callable[[], T]) -> T:
    """Run ``task``; a :class:`UserError` becomes ``error: <message>`` on stderr and exit code 2.

    ``HYDRA_FULL_ERROR=1`` re-raises it with the full traceback, for debugging. Inside a multirun
    the error is logged (into the job's ``train.log``) and re-raised as an ordinary exception:
    Hydra then marks only this job failed and runs the others (``SystemExit`` would end the sweep).
    """
    try:
        try:
            return task()
        except Exception as err:  # a UserError raised while Hydra instantiates a config node arrives wrapped
            cause = user_error_cause(err)
            if cause is None or cause is err:
                raise
            raise cause from None
    except UserError as err:
        if in_multirun():
            log.error("error: %s", err)
            raise
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def null_groups_removed(argv: list[str]) -> list[str]:
    """``logger=null`` -> ``~logger`` for a config group (a folder of ``conf/``): Hydra refuses ``null`` as a group
    choice with a traceback, while "no logger" is what the user means (``~logger`` removes the group)."""
    from lossdiag import CONF_DIR

    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        group = key.lstrip("+")
        if sep and value.strip().lower() in ("null", "none") and (CONF_DIR / group).is_dir():
            arg = f"~{group}"
        out.append(arg)
    return out


def quote_paths(argv: list[str]) -> list[str]:
    """``ckpt_path=outputs/runs/d/t_loss=bounded/checkpoints/best_val_acc.ckpt`` -> the same with the value quoted.

    Only values of :data:`PATH_KEYS` that contain ``=`` and are not quoted already; a comma-separated
    sweep over plain folders (``data.root=/a,/b``) is left alone.
    """
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and override_key(arg) in PATH_KEYS and "=" in value and value[:1] not in ("'", '"'):
            arg = f"{key}={quote(value)}"
        out.append(arg)
    return out


def with_folder_data(argv: list[str]) -> list[str]:
    """``data.root=<folder>`` without a ``data=`` choice: add ``data=folder`` (the data that has a root) and say so.

    ``+data.root=`` becomes ``data.root=`` (``data=folder`` has the key). The note goes to stderr: the job's log
    does not exist yet, and ``data=folder`` is in the run's ``.hydra/overrides.yaml`` and folder name.
    """
    keys = [override_key(a) for a in argv if "=" in a and not a.startswith("-")]
    if "data.root" not in keys or "data" in keys:
        return argv
    out = [a.lstrip("+") if override_key(a) == "data.root" else a for a in argv]
    root = next(a.split("=", 1)[1] for a in out if override_key(a) == "data.root")
    if os.path.isdir(os.path.expanduser(root.strip("'\""))):  # else the one line is the missing folder's error
        print("note: data.root is set without data=: using data=folder (your image folder)", file=sys.stderr)
    return ["data=folder", *out]


def _close_key(key: str) -> str:
    """`` (did you mean trainer.max_epochs?)`` for a misspelt key of a config group's options, else ``""``."""
    import yaml

    from lossdiag import CONF_DIR

    group, _, name = key.rpartition(".")
    folder = CONF_DIR / group.replace(".", "/") if group else None
    files = sorted(folder.glob("*.yaml")) if folder is not None and folder.is_dir() else []
    names: set[str] = set()
    for file in files:
        loaded = yaml.safe_load(file.read_text())
        names |= {str(k) for k in loaded if k != "defaults"} if isinstance(loaded, dict) else set()
    close = difflib.get_close_matches(name, sorted(names), n=1)
    return f" (did you mean {group}.{close[0]}?)" if close else ""


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
        if key == "data.root":
            return (
                "data.root is a key of data=folder only: use data=folder data.root=<folder> for your images"
            )
        return (
            f"unknown config key '{key}'{_close_key(key)}: check its spelling (python -m {entry} --cfg job lists "
            f"every key), or add a new key with +{key}=..."
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
