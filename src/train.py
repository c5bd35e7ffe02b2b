"""``python -m src.train [overrides]``: train ShallowNet and log everything to the run folder.

Heavy imports (torch, Lightning) happen inside the task, so ``--help`` and ``--cfg job`` are instant.
``python -m src.train resume=<run dir>`` continues an interrupted run (see :mod:`src.app.resume`).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from src.app.cli import one_line_hydra_errors, quote_paths, run_task
from src.app.console import quiet_spawned_process, quiet_warnings
from src.app.resolvers import register_resolvers
from src.app.resume import expand_resume

register_resolvers()
quiet_warnings()  # module level: processes spawned for multi-process training import this module too
if __name__ == "__mp_main__":  # such a spawned process
    quiet_spawned_process()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    def task() -> float | None:
        from src.app.console import discard_if_rejected, finished, quiet_lightning
        from src.errors import user_error_cause
        from src.rundir.status import recorded_run

        try:
            # everything the job does goes inside: <run>/metrics.json then says complete or failed (and why)
            with recorded_run(cfg.paths.output_dir) as outcome:
                from src.app.validate import validate

                validate(cfg)  # bad values fail before Lightning is imported
                from src.app.pipeline import train

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


def cli() -> None:
    """The command line: ``resume=`` expanded, run-folder paths quoted, Hydra's config errors as one line (exit code 2)."""
    sys.argv[1:] = run_task(lambda: expand_resume(quote_paths(sys.argv[1:])))
    with one_line_hydra_errors("src.train"):
        main()


if __name__ == "__main__":
    cli()
