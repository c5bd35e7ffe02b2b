"""``python -m src.report <sweep folder>``: one comparison table for a whole sweep (:mod:`lossdiag.app.sweep_report`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from lossdiag.app.cli import run_task


def main(argv: Sequence[str] | None = None, prog: str = "python -m lossdiag.report") -> None:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compare the runs of a sweep: writes report.md, report.csv and report.png into the sweep folder.",
    )
    parser.add_argument("sweep_dir", help="a sweep folder, e.g. outputs/sweeps/2026-01-01/12-00-00")
    args = parser.parse_args(argv)

    def task() -> None:
        from lossdiag.app.sweep_report import REPORT_FILES, build_report

        _, _, markdown = build_report(args.sweep_dir)
        print(markdown)
        print(f"\nwrote {', '.join(str(Path(args.sweep_dir) / f) for f in REPORT_FILES)}")

    run_task(task)


if __name__ == "__main__":
    main()
