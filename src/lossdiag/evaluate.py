"""``python -m src.evaluate ckpt_path=<run>/checkpoints/best_val_acc.ckpt [overrides]``.

Runs the end-of-training reports and diagnosis (classification report, worst samples, calibration,
``diagnosis.md``) for one saved checkpoint on the data the checkpoint's run was trained on
(read from ``<run>/.hydra/``): its val split, rebuilt with the run's seed. ``data.root=<folder>`` alone
evaluates every image of another folder (the run's ``data=folder`` is taken from the run);
``data=``/``model=``/``loss=``/``seed=`` overrides replace the run's values. A failed evaluation leaves no
folder behind.
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
from lossdiag.app.console import quiet_warnings
from lossdiag.app.run_config import with_run_groups

quiet_warnings()

ADDED: list[str] = []  # the run's group options added to the command line (not the user's choices)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    def task() -> None:
        from pathlib import Path

        from hydra.core.hydra_config import HydraConfig

        from lossdiag.app.console import finished
        from lossdiag.app.evaluate import evaluate_checkpoint
        from lossdiag.rundir.find import remove_unfinished

        hydra_cfg = HydraConfig.get()
        overrides = [o for o in hydra_cfg.overrides.task if o not in ADDED]
        try:
            evaluate_checkpoint(cfg, overrides=overrides)
        except BaseException:
            remove_unfinished(Path(hydra_cfg.runtime.output_dir), f"{hydra_cfg.job.name}.log")
            raise
        finished(cfg.paths.output_dir)  # where it is and how to open it in TensorBoard, as after a run

    run_task(task)


def cli(entry: str = "lossdiag.evaluate") -> None:
    """The command line: the run's config groups added, run-folder paths quoted, Hydra's errors as one line."""
    # data.root alone: data=folder (a folder run keeps its own data settings; a digits run's model meets a folder)
    sys.argv[1:] = with_folder_data(sys.argv[1:])
    sys.argv[1:], ADDED[:] = with_run_groups(sys.argv[1:])  # the run's config groups (data=folder, ...)
    # a run folder's name holds "=": ckpt_path=<run>/checkpoints/best_val_acc.ckpt
    sys.argv[1:] = quote_paths(null_groups_removed(sys.argv[1:]))
    with one_line_hydra_errors(entry):
        main()


if __name__ == "__main__":
    cli()
