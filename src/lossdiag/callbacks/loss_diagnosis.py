"""``LossDiagnosis``: the whole diagnosis as one drop-in Lightning callback.

Add ``LossDiagnosis(output_dir=...)`` to any ``Trainer`` and get, per validation epoch, the per-sample
loss histograms and scalars in your TensorBoard logger, and at the end of ``fit`` ``diagnosis.md``,
``diagnosis.json``, ``samples.npz``, ``worst.csv``, ``reports/`` and ``figures/`` in ``output_dir``.
``python -m src.train`` uses this same callback. It is a thin adapter: the work is the Lightning-free engine
:mod:`lossdiag.diagnosis` (record -> judge -> write); this class feeds it from the trainer's hooks, reading the
project's batches and logits through :mod:`lossdiag.callbacks.contract` and its data through
:mod:`lossdiag.callbacks.data_info`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lossdiag.callbacks.console import announce
from lossdiag.callbacks.contract import BatchFn, Contract, LogitsFn, ValOrder, objective, step_logits
from lossdiag.callbacks.data_info import class_names, image_normalization, split_info
from lossdiag.callbacks.epoch_figures import EpochFigures
from lossdiag.callbacks.evaluation import end_states, evaluate_loader, evaluate_models, figure_images
from lossdiag.callbacks.last_checkpoint import is_last_epoch
from lossdiag.callbacks.tensorboard import tensorboard_logger, tensorboard_writer, write_epoch_events
from lossdiag.diagnosis.record import Recorder
from lossdiag.diagnosis.samples import Samples, load_samples
from lossdiag.diagnosis.write import Diagnosis, write_diagnosis
from lossdiag.errors import UserError
from lossdiag.functional.losses import loss_cap_from_initial, per_sample_cross_entropy
from lossdiag.functional.outputs import evaluate_logits
from lossdiag.models.epoch_log import log_epoch_metrics
from lossdiag.models.predict import DEFAULT_CHUNK_BYTES
from lossdiag.models.recorder import SampleRecorder, SampleRecords
from lossdiag.rundir.atomic import atomic_torch_save
from lossdiag.rundir.checkpoints import load_checkpoint
from lossdiag.rundir.paths import DIAGNOSIS_FILE, INITIAL_CKPT, SAMPLES_FILE, display_path

log = logging.getLogger(__name__)
STAGES = ("train", "val")
SCALAR_TAGS = ("val/loss_from_wrong", "val/ece", "val/temperature")  # always logged to TensorBoard


def initial_lr(trainer: L.Trainer) -> float | None:
    """The learning rate the run started with (before any scheduler), when it had one: one optimizer, one group."""
    if len(trainer.optimizers) != 1 or len(trainer.optimizers[0].param_groups) != 1:
        return None
    group = trainer.optimizers[0].param_groups[0]
    return float(group.get("initial_lr", group["lr"]))


class LossDiagnosis(L.Callback):
    """Why does val loss rise while accuracy holds? Records per-sample outputs and writes the diagnosis.

    **What your project must provide** (each problem is one line naming the fix, at the first batch or epoch):

    - logits ``(batch, classes)`` per val sample: ``outputs["logits"]`` of ``validation_step``, else
      ``logits_fn(module, x)`` (or the module's ``lossdiag_logits(x)``), else ``forward(x)``; a tuple's first item,
      a dict's ``"logits"`` and an object's ``.logits`` are read; one logit per sample is binary (``[0, z]``);
      before training and at the end it uses the hook or ``forward`` (never ``validation_step``);
    - val batches ``(x, y)`` or ``(x, y, index)``, or what ``batch_fn(batch) -> (x, y[, index])`` (or the module's
      ``lossdiag_batch(batch)``) reads from them; ``y`` class indices (one-hot rows are converted; soft targets and
      labels out of range are refused);
    - the val loader in the same order every epoch, checked (without an index, records are matched by position);
      under DDP the batches must carry ``index`` (the sample's position in the val set).

    **What it uses when present** (all optional):

    - ``epoch_records(stage)`` on the module, returning this epoch's gathered ``SampleRecords`` (index, target,
      logits) of ``"train"`` / ``"val"`` (``LossDiagModule`` has it): then the callback records nothing per step;
    - train records when ``training_step`` returns ``{"loss", "logits"}`` and train batches carry an index;
    - a ``loss_cap`` tensor on the module (the bounded loss's cap); otherwise the cap is ``mean + k * std``
      of the untrained model's per-sample val losses, measured before the first optimizer step;
    - class names (``class_names`` / ``classes``), file paths (``val_paths``, ``train_paths``; an ``ImageFolder``'s
      files) and the images' normalisation (``mean``/``std``, a ``Normalize`` transform) on the datamodule or the
      val dataset (through ``Subset`` / ``ConcatDataset``);
    - a TensorBoard logger for histograms and figures (a warning says when there is none), any Lightning logger
      for the scalars; the trainer's checkpoint callbacks for the best models.

    For every validation epoch it logs ``val/`` scalars and ``val/loss_per_sample`` histograms (``train/`` too with
    train records), one logger write per epoch at ``step=epoch``, evaluated in blocks of epochs
    (``flush_every_n_epochs`` or ``flush_every_s``, whichever comes first). Every ``figures_every_n_epochs`` epochs
    (and the last) it draws a reliability diagram and the worst val images. At the end of fit it evaluates the
    initial, best and last weights on the val loader (those the verdict and the suspects read on the train loader
    too, see :func:`~lossdiag.callbacks.evaluation.train_models`) and writes the files; those evaluations stream in
    chunks of at most ``eval_chunk_mb`` MiB of input and activations (a larger loader batch is cut, see
    :func:`lossdiag.models.predict.iter_logits`).
    """

    def __init__(
        self,
        output_dir: str | Path,
        worst_k: int = 16,
        write_every_n_epochs: int = 50,
        figures_every_n_epochs: int = 25,
        reports: bool = True,
        save_initial_checkpoint: bool = True,
        histograms: bool = True,
        k: float = 3.0,
        flush_every_n_epochs: int = 50,
        flush_every_s: float = 2.0,
        config_keys: bool = False,
        batch_fn: BatchFn | None = None,
        logits_fn: LogitsFn | None = None,
        eval_chunk_mb: float = DEFAULT_CHUNK_BYTES / 2**20,
    ) -> None:
        if not str(output_dir):
            raise UserError("LossDiagnosis needs output_dir: the folder its files go to")
        if int(flush_every_n_epochs) < 1 or float(flush_every_s) < 0:
            raise UserError(
                f"LossDiagnosis needs flush_every_n_epochs >= 1 and flush_every_s >= 0, got {flush_every_n_epochs} "
                f"and {flush_every_s}"
            )
        if not float(eval_chunk_mb) > 0:
            raise UserError(
                f"LossDiagnosis needs eval_chunk_mb > 0 (MiB per evaluation chunk), got {eval_chunk_mb}"
            )
        self.output_dir = Path(output_dir)
        self.worst_k = int(worst_k)
        self.figures_every_n_epochs = int(figures_every_n_epochs)
        self.reports = reports
        self.save_initial_checkpoint = save_initial_checkpoint
        self.histograms = histograms
        self.k = float(k)
        self.eval_chunk_bytes = int(float(eval_chunk_mb) * 2**20)
        self.config_keys = config_keys  # the advice may name lossdiag config keys (python -m src.train)
        self.contract = Contract(batch_fn, logits_fn)  # how the project's batches and logits are read
        self.order = ValOrder()  # the val samples of every pass, as first seen
        self.recorder = Recorder(self.output_dir, flush_every_n_epochs, flush_every_s, write_every_n_epochs)
        self.step_recorders = {
            stage: SampleRecorder() for stage in STAGES
        }  # for modules without epoch_records
        self._seen = dict.fromkeys(STAGES, False)
        self._train_indexed = True
        self._module_records = False  # the module gathers the records (see setup)
        self._offset = 0  # samples seen in this val epoch (the index of a batch without one)
        self.figures = EpochFigures(figures_every_n_epochs, worst_k)
        self._cap: float | None = None
        self.initial: dict[str, torch.Tensor] | None = None
        self.diagnosis: Diagnosis | None = None
        self.epoch_values: dict[str, float] = {}  # the last value of everything sent to the loggers
        # False: on_fit_end evaluates the models but leaves the writing to a call of write() (src.train adds the
        # out-of-fold probabilities of suspects.folds to the samples first)
        self.write_at_fit_end = True

    @property
    def samples(self) -> Samples | None:
        return self.recorder.samples

    # -- preconditions and per-step recording ----------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.limit_val_batches == 0:
            raise UserError("LossDiagnosis needs validation: remove limit_val_batches=0 from the Trainer")
        self.contract.bind(pl_module)
        for recorder in self.step_recorders.values():
            recorder.to(pl_module.device)
        # a module that gathers the per-sample records itself (LossDiagModule): use its, record nothing per step
        self._module_records = callable(getattr(pl_module, "epoch_records", None))
        if trainer.global_rank == 0 and tensorboard_logger(trainer) is None:
            scalars = "go to the other loggers" if trainer.loggers else "are not logged either"
            log.warning(
                "LossDiagnosis: the Trainer has no TensorBoard logger (logger=None/False or none of its loggers is a "
                f"TensorBoardLogger), so the per-sample loss histograms and figures are not logged and the scalars "
                f"{scalars}; the files in {display_path(self.output_dir)} are written all the same. Add "
                "logger=TensorBoardLogger(save_dir=...) to the Trainer to see them in TensorBoard"
            )

    def _start_epoch(self, stage: str) -> None:
        self.step_recorders[stage].reset()
        self._seen[stage] = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_epoch("train")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_epoch("val")
        self._offset = 0
        self.figures.start_epoch(trainer.current_epoch, is_last_epoch(trainer), tensorboard_writer(trainer))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._seen["train"] = True
        if self._module_records or not self._train_indexed:
            return
        x, y, index = (
            (None, None, None) if step_logits(outputs) is None else self.contract.split(batch, "train")
        )
        if index is None or y is None:  # no logits, or shuffled without an index: no train records
            self._train_indexed = False
            log.info("LossDiagnosis: training batches carry no index or no logits; train/ records are off")
            return
        logits = self.contract.logits(pl_module, outputs, x, len(y))
        self.step_recorders["train"].update(index, self.contract.target(y, logits.shape[1], "train"), logits)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if trainer.sanity_checking or dataloader_idx != 0:
            return
        self._seen["val"] = True
        if self._module_records and not self.figures.collecting:
            return
        x, y, index = self.contract.split(batch, "val", trainer.world_size)
        if index is None:  # positions in this epoch's loader order
            index = torch.arange(self._offset, self._offset + len(y), device=y.device)
        self._offset += len(y)
        if not self._module_records:
            logits = self.contract.logits(pl_module, outputs, x, len(y))
            self.step_recorders["val"].update(index, self.contract.target(y, logits.shape[1], "val"), logits)
        self.figures.collect(index, x)

    def _epoch_records(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> SampleRecords:
        """This epoch's gathered records of ``stage``, checked (on every rank: it syncs); the module's when it
        keeps them. The val samples must be those of every earlier pass, in the same order."""
        if self._module_records:
            rec = pl_module.epoch_records(stage)  # type: ignore[operator]
        else:
            rec = self.contract.check(
                self.step_recorders[stage].compute(), stage, pl_module, trainer.world_size
            )
        if stage == "val":
            self.order.check(rec, self.contract.indexed["val"], f"in epoch {trainer.current_epoch}")
        return rec

    # -- the bounded loss's cap and the initial weights -----------------------------------------
    @staticmethod
    def _module_cap(pl_module: L.LightningModule) -> float | None:
        """The module's own ``loss_cap`` (e.g. ``LossDiagModule``'s), when it has a finite one."""
        cap = getattr(pl_module, "loss_cap", None)
        if torch.is_tensor(cap) and cap.numel() == 1 and torch.isfinite(cap):
            return float(cap)
        return None

    def loss_cap(self, pl_module: L.LightningModule) -> float:
        cap = self._module_cap(pl_module)
        if cap is not None:
            return cap
        return self._cap if self._cap is not None else float("nan")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # here (not on_train_start) the module's own on_train_start has already run (e.g. computed its cap)
        if self.initial is not None or trainer.global_step != 0:
            return
        self.initial = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        if self._module_cap(pl_module) is None:
            rec = evaluate_loader(
                trainer, pl_module, trainer.val_dataloaders, "val", self.contract, self.eval_chunk_bytes
            )
            if rec is not None:
                self.order.check(rec, self.contract.indexed["val"], "before training")
                self._cap = loss_cap_from_initial(rec.cross_entropy, self.k)
        if self.save_initial_checkpoint and trainer.global_rank == 0:
            ckpt = {"state_dict": self.initial, "epoch": -1, "global_step": 0, "loss_cap": self._cap}
            atomic_torch_save(self.output_dir / INITIAL_CKPT, ckpt)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.recorder.resumed_at = trainer.current_epoch if trainer.ckpt_path else None
        self.figures.norm = image_normalization(trainer)
        initial = self.output_dir / INITIAL_CKPT
        if trainer.ckpt_path and self.initial is None and initial.is_file():
            # resumed: the untrained weights were saved by the first attempt
            ckpt = load_checkpoint(initial)
            self.initial, self._cap = ckpt["state_dict"], ckpt.get("loss_cap")

    # -- every epoch: keep the records, evaluate them in blocks ----------------------------------
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train_indexed and self._seen["train"]:
            rec = self._epoch_records(trainer, pl_module, "train")
            if trainer.global_rank == 0:
                if self.recorder.train_info is None:
                    self.recorder.train_info = split_info(trainer, rec, "train")
                self.recorder.keep("train", trainer.current_epoch, rec.logits, rec.target)
        # here, not at the val epoch's end: Lightning validates before the training epoch ends
        if trainer.global_rank == 0 and self.recorder.flush_due():
            self._flush(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._seen["val"]:
            return
        rec = self._epoch_records(trainer, pl_module, "val")
        if trainer.global_rank != 0:
            return
        if self.recorder.samples is None:
            self.recorder.samples = Samples(
                classes=class_names(trainer, rec),
                loss_cap=self.loss_cap(pl_module),
                val=split_info(trainer, rec, "val"),
                objective=objective(pl_module),
            )
        self.recorder.keep("val", trainer.current_epoch, rec.logits, rec.target)
        if self.figures.collecting:
            _, logits = self.recorder.pending["val"][-1]  # ranked as the block evaluation will rank them
            losses = per_sample_cross_entropy(logits, self.recorder.targets["val"])
            self.figures.keep_worst(trainer.current_epoch, self.recorder.samples, losses)

    def _flush(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate the pending epochs (the engine) and send each epoch's values to the loggers at step = epoch."""
        block = self.recorder.flush(self.loss_cap(pl_module))
        if block is None:
            return
        tensorboard = tensorboard_logger(trainer)
        others = [logger for logger in trainer.loggers if logger is not tensorboard]
        for epoch, values in block.values.items():
            self.epoch_values.update(log_epoch_metrics(trainer, values, epoch, loggers=others))
        if tensorboard is not None and not trainer.sanity_checking:  # as log_epoch_metrics
            write_epoch_events(
                tensorboard.experiment, block.values, block.losses if self.histograms else None
            )
        self._draw_figures(trainer)

    def _draw_figures(self, trainer: L.Trainer, now: bool = False) -> None:
        writer, samples = tensorboard_writer(trainer), self.recorder.samples
        self.figures.draw(writer, samples, self.recorder.logged_through, self.output_dir, now)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # before any callback's on_fit_end (e.g. the HParams summary reads the logged history)
        if trainer.global_rank == 0:
            self._flush(trainer, pl_module)
            self.recorder.finish()
            self._draw_figures(trainer, now=True)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Log and record the epochs finished before the failure (a failing flush must not hide the error)."""
        if trainer.global_rank != 0:
            return
        try:
            self.on_train_end(trainer, pl_module)
        except Exception as err:
            log.warning("LossDiagnosis: could not record the last epochs after the failure: %s", err)

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.recorder.state_dict(),
            "pending_figures": list(self.figures.pending),
            "val_order": self.order.state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recorder.load_state_dict(state_dict)
        self.figures.pending = [*state_dict.get("pending_figures", []), *self.figures.pending]
        self.order.load(state_dict.get("val_order"))

    # -- end of fit: evaluate whole models, write the files --------------------------------------
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        samples = self.recorder.samples
        if trainer.world_size > 1:
            # every rank must take part in the evaluations (they gather); rank 0 has the samples
            flag = pl_module.all_gather(torch.tensor(samples is not None, device=pl_module.device))
            if not bool(flag.flatten()[0]):
                return
        elif samples is None or not samples.epochs:
            return
        last_epoch = samples.epochs[-1] if samples and samples.val_epochs else trainer.current_epoch
        states = end_states(trainer, pl_module, self.initial, self.reports, last_epoch)
        models = evaluate_models(trainer, pl_module, states, self.contract, self.eval_chunk_bytes)
        for name, (_, records) in models.items():
            if "val" in records:
                self.order.check(
                    records["val"], self.contract.indexed["val"], f"in the evaluation of the {name} model"
                )
        if trainer.global_rank != 0 or samples is None:
            return
        self.recorder.take_split()
        if samples.train is None and "train" in models.get("last", (0, {}))[1]:
            samples.train = split_info(trainer, models["last"][1]["train"], "train")
        evaluated = {
            name: (
                epoch,
                {s: evaluate_logits(r.logits, r.target, crossfit=s == "val") for s, r in records.items()},
            )
            for name, (epoch, records) in models.items()
        }
        samples.add_models(evaluated if self.reports else {})
        if self.write_at_fit_end:
            self._write(trainer, samples)
        else:  # what write() will start from, also after a kill: restore_samples() reads it back
            samples.save(self.output_dir / SAMPLES_FILE)

    def restore_samples(self) -> Samples | None:
        """:attr:`samples`, or, for a run resumed after its last epoch (nothing recorded in this attempt), the
        ``samples.npz`` its finished fit saved (with its evaluated models); ``None`` when there is neither."""
        path = self.output_dir / SAMPLES_FILE
        if self.recorder.samples is None and path.is_file():
            samples = load_samples(path)
            if samples.epochs and samples.models:
                self.recorder.samples = samples
        return self.recorder.samples

    def write(self, trainer: L.Trainer) -> Diagnosis | None:
        """Write the run's files now, from what ``fit`` recorded and evaluated (with ``write_at_fit_end=False``,
        after whatever was added to :attr:`samples`); ``None`` where there is nothing to write (not rank 0)."""
        samples = self.recorder.samples
        if trainer.global_rank != 0 or samples is None or not samples.epochs:
            return None
        self._write(trainer, samples)
        return self.diagnosis

    def _logged(self, trainer: L.Trainer) -> frozenset[str]:
        """The per-epoch TensorBoard tags this run logged (``diagnosis.md`` names only those)."""
        if tensorboard_logger(trainer) is None:
            return frozenset()
        stages = ["val", *(["train"] if self.recorder.train_info is not None else [])]
        histograms = [f"{stage}/loss_per_sample" for stage in stages] if self.histograms else []
        return frozenset({*SCALAR_TAGS, *histograms, *self.figures.drawn})

    def _write(self, trainer: L.Trainer, samples: Samples) -> None:
        writer = tensorboard_writer(trainer)
        final_images, suspect_images = figure_images(
            trainer, samples, self.worst_k, self.contract, writer is not None
        )
        self.diagnosis = write_diagnosis(
            self.output_dir,
            samples,
            writer,
            samples.epochs[-1],  # the last validation epoch: every figure and text is at step = epoch
            val_images=final_images or None,
            worst_k=self.worst_k,
            suspect_images=suspect_images,
            config_keys=self.config_keys,
            logged=self._logged(trainer),
            norm=self.figures.norm,
            lr=initial_lr(trainer),
        )
        announce(
            log, f"{self.diagnosis.summary}\nFull diagnosis: {display_path(self.output_dir / DIAGNOSIS_FILE)}"
        )
