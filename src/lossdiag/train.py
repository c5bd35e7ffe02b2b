"""``python -m lossdiag.train [overrides]`` (from the repository root also ``python -m src.train``): train a
classifier and log everything to the run folder.

Heavy imports (torch, Lightning) happen inside the task, so ``--help`` and ``--cfg job`` are instant.
``python -m src.train resume=<run dir>`` continues an interrupted run (see :mod:`lossdiag.app.resume`).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from lossdiag import CONF_DIR
from lossdiag.app.cli import (
    null_groups_removed,
    one_line_hydra_errors,
    quote_paths,
    run_task,
    with_folder_data,
)
from lossdiag.app.console import quiet_spawned_process, quiet_warnings
from lossdiag.app.resolvers import register_resolvers
from lossdiag.app.resume import expand_resume


def prepare_process(module_name: str) -> None:
    """Called at import by every module that runs :func:`cli` as ``__main__`` (this one, ``src/train.py``):
    processes spawned for multi-process training import that module as ``__mp_main__`` and need the same."""
    register_resolvers()
    quiet_warnings()
    if module_name == "__mp_main__":  # such a spawned process
        quiet_spawned_process()


prepare_process(__name__)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    def task() -> float | None:
        from lossdiag.app.console import discard_if_rejected, finished, quiet_lightning
        from lossdiag.errors import user_error_cause
        from lossdiag.rundir.status import recorded_run

        try:
            # everything the job does goes inside: <run>/metrics.json then says complete or failed (and why)
            with recorded_run(cfg.paths.output_dir) as outcome:
                from lossdiag.app.validate import validate

                validate(cfg)  # bad values fail before Lightning is imported
                from lossdiag.app.pipeline import train

                quiet_lightning()
                outcome.metrics = metrics = train(cfg)
        except Exception as err:
            if user_error_cause(err) is not None:  # also one raised inside hydra.utils.instantiate
                discard_if_rejected(cfg.paths.output_dir)
            raise  # run_task turns a UserError (unwrapped) into one line
        finished(cfg.paths.output_dir)
        metric = cfg.get("optimized_metric")
        return metrics.get(metric) if metric else None

    return run_task(task)


def cli(entry: str = "lossdiag.train") -> None:
    """The command line: ``resume=`` expanded, run-folder paths quoted, ``data.root=`` alone selecting
    ``data=folder``, Hydra's config errors as one line (exit code 2)."""
    sys.argv[1:] = with_folder_data(
        run_task(lambda: expand_resume(quote_paths(null_groups_removed(sys.argv[1:]))))
    )
    with one_line_hydra_errors(entry):
        main()


if __name__ == "__main__":
    cli()
