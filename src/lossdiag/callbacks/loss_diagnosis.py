"""``LossDiagnosis``: the whole diagnosis as one drop-in Lightning callback.

Add ``LossDiagnosis(output_dir=...)`` to any ``Trainer`` and get, per validation epoch, the per-sample
loss histograms and scalars in your TensorBoard logger, and at the end of ``fit`` ``diagnosis.md``,
``diagnosis.json``, ``samples.npz``, ``worst.csv``, ``reports/`` and ``figures/`` in ``output_dir``.
``python -m src.train`` uses this same callback.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

from lossdiag.callbacks.console import announce
from lossdiag.callbacks.last_checkpoint import is_last_epoch
from lossdiag.callbacks.tensorboard import scalar_values, tensorboard_logger, tensorboard_writer
from lossdiag.errors import UserError
from lossdiag.functional.breakdown import (
    epoch_scalar_block,
    equal_width_histograms,
    loss_distributions,
    worst_indices,
)
from lossdiag.functional.losses import loss_cap_from_initial, per_sample_cross_entropy
from lossdiag.functional.outputs import evaluate_epochs, evaluate_logits
from lossdiag.functional.run_kinds import at_lowest_so_far, mean_losses
from lossdiag.functional.suspects import given_label_dynamics
from lossdiag.models.epoch_log import log_epoch_metrics
from lossdiag.models.recorder import SampleRecorder, SampleRecords
from lossdiag.render.figures import WORST_TILES, reliability_figure
from lossdiag.rundir.artifacts import Diagnosis, worst_figure, write_diagnosis
from lossdiag.rundir.atomic import atomic_torch_save
from lossdiag.rundir.checkpoints import load_checkpoint
from lossdiag.rundir.figures import write_figure
from lossdiag.rundir.journal import (
    Journal,
    dynamics_journal,
    evaluation_record,
    record_evaluation,
    val_journal,
)
from lossdiag.rundir.paths import (
    DIAGNOSIS_FILE,
    INITIAL_CKPT,
    SAMPLES_FILE,
    TRAIN_JOURNAL,
    VAL_JOURNAL,
    display_path,
    epoch_figure_path,
)
from lossdiag.rundir.samples import Samples, SplitInfo
from lossdiag.rundir.suspects import rank_run, wanted_images

log = logging.getLogger(__name__)
STAGES = ("train", "val")
# mid-run figures are drawn when their block is evaluated while that takes at most this share of the time since
# the last drawing; otherwise when training ends (see LossDiagnosis._draw_figures)
FIGURE_TIME_SHARE = 0.1
# per-sample loss histogram bins: enough for a few hundred to thousands of samples, and every byte of an event
# costs (TensorBoard's writer checksums events in pure Python without TensorFlow: ~0.1 ms per KB)
HISTOGRAM_BINS = 32
# pending logits are flushed before they exceed this (large val sets, many classes): memory and checkpoint size
MAX_PENDING_BYTES = 64 * 2**20


class LossDiagnosis(L.Callback):
    """Why does val loss rise while accuracy holds? Records per-sample outputs and writes the diagnosis.

    **What your project must provide** (checked with a one-line error at the first batch):

    - the LightningModule's ``forward(x)`` returns logits ``(N, C)``;
    - the val loader yields ``(x, y)`` or ``(x, y, index)`` batches, in the same order every epoch
      (no shuffling); under DDP it must yield ``index`` (the sample's position in the val set), so
      the samples ``DistributedSampler`` repeats to pad the last batch are counted once.

    **What it uses when present** (all optional):

    - ``epoch_records(stage)`` on the module, returning this epoch's gathered ``SampleRecords`` (index, target,
      logits) of ``"train"`` / ``"val"`` (``LossDiagModule`` has it): then the callback records nothing per step;
    - ``outputs["logits"]`` returned by ``validation_step`` / ``training_step`` (else val logits come from
      re-running ``forward`` on the batch; train records need them, and an ``index`` in the train batch);
    - a ``loss_cap`` tensor on the module (the bounded loss's cap); otherwise the cap is ``mean + k * std``
      of the untrained model's per-sample val losses, measured before the first optimizer step;
    - ``class_names``, ``val_paths`` and ``train_paths`` on the datamodule (lists by sample index);
    - a TensorBoard logger for histograms and figures, any Lightning logger for the scalars;
    - the trainer's ``checkpoint_callback`` for the best model.

    For every validation epoch it logs ``val/`` scalars (loss tail, correct/wrong breakdown, calibration) and
    ``val/loss_per_sample`` histograms (``train/`` too when the training step returns logits), one logger
    write per epoch at ``step=epoch``; it evaluates them in blocks of epochs (``flush_every_n_epochs`` or
    ``flush_every_s``, whichever comes first), so they reach the loggers a little later than the epoch.
    Every ``figures_every_n_epochs`` epochs (and the last) it draws a reliability diagram and the worst val
    images. At the end of fit it evaluates the initial, best and last weights on the val (and, with indexed
    batches, train) loader and writes the run's files.
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
    ) -> None:
        if not str(output_dir):
            raise UserError("LossDiagnosis needs output_dir: the folder its files go to")
        self.output_dir = Path(output_dir)
        self.worst_k = int(worst_k)
        self.write_every_n_epochs = int(write_every_n_epochs)
        self.figures_every_n_epochs = int(figures_every_n_epochs)
        self.reports = reports
        self.save_initial_checkpoint = save_initial_checkpoint
        self.histograms = histograms
        self.k = float(k)
        if int(flush_every_n_epochs) < 1 or float(flush_every_s) < 0:
            raise UserError(
                f"LossDiagnosis needs flush_every_n_epochs >= 1 and flush_every_s >= 0, got {flush_every_n_epochs} "
                f"and {flush_every_s}"
            )
        self.flush_every_n_epochs = int(flush_every_n_epochs)
        self.flush_every_s = float(flush_every_s)
        self.recorders = {stage: SampleRecorder() for stage in STAGES}
        self._seen = dict.fromkeys(STAGES, False)
        self._offset = dict.fromkeys(STAGES, 0)
        self._train_indexed = True
        self._figure_images: dict[int, torch.Tensor] = {}  # this val epoch's inputs, when figures are due
        # figures due but not drawn yet: [(epoch, the inputs of that epoch's worst samples)] (see _draw_figures)
        self._pending_figures: list[tuple[int, dict[int, torch.Tensor]]] = []
        self._draw_s = 0.2  # how long one epoch's figures took to draw (a guess until the first is drawn)
        self._drawn_at = time.monotonic()
        self._cap: float | None = None
        self._journal: Journal | None = None
        self._dynamics_journal: Journal | None = None
        self._pending_dynamics: list[
            tuple[int, np.ndarray, np.ndarray]
        ] = []  # every train epoch's, until fit end
        self._train_info: SplitInfo | None = None
        # per-epoch logits not yet evaluated and logged (see ``_flush``), by stage: [(epoch, logits (N, C))]
        self._pending: dict[str, list[tuple[int, torch.Tensor]]] = {stage: [] for stage in STAGES}
        self._targets: dict[str, torch.Tensor] = {}  # each split's labels, in record order
        self._logged_through = -1  # the last epoch whose diagnosis went to the loggers and journals
        self._collect_images = False  # this val epoch's inputs are kept for the figures
        self._module_records = False  # the module gathers the records (see setup)
        self._journal_before: int | None = (
            None  # from the checkpoint's state: the journals keep epochs before it
        )
        self._resumed_at: int | None = None  # the epoch a resumed run starts at
        self._last_flush = time.monotonic()
        self._saved_at = 0  # how many val epochs samples.npz held when last written
        self._lowest_val_loss = math.inf  # the lowest mean val loss of the epochs evaluated so far
        # the latest evaluated val epoch's (epoch, logits) while it has no cross-fitted calibration (see _flush):
        # one epoch held beside the pending block; not in the checkpoints (a run resumed after its last val epoch
        # leaves that epoch without them)
        self._uncrossfitted_last: tuple[int, torch.Tensor] | None = None
        self.samples: Samples | None = None
        self.initial: dict[str, torch.Tensor] | None = None
        self.diagnosis: Diagnosis | None = None
        self.epoch_values: dict[str, float] = {}  # the last value of everything sent to the loggers

    # -- preconditions --------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.limit_val_batches == 0:
            raise UserError("LossDiagnosis needs validation: remove limit_val_batches=0 from the Trainer")
        if not callable(getattr(pl_module, "forward", None)):
            raise UserError(f"LossDiagnosis needs {type(pl_module).__name__}.forward(x) returning logits")
        for recorder in self.recorders.values():
            recorder.to(pl_module.device)
        # a module that gathers the per-sample records itself (LossDiagModule): use its, record nothing per step
        self._module_records = callable(getattr(pl_module, "epoch_records", None))

    def _unpack(
        self, batch: Any, stage: str, world_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if (
            not isinstance(batch, list | tuple)
            or len(batch) not in (2, 3)
            or not all(map(torch.is_tensor, batch))
        ):
            raise UserError(
                f"LossDiagnosis needs {stage} batches (x, y) or (x, y, index) of tensors, got {type(batch).__name__}"
                + (f" of {len(batch)}" if isinstance(batch, list | tuple) else "")
                + ": make the dataset return (input, label) pairs"
            )
        x, y = batch[0], batch[1]
        index = batch[2] if len(batch) == 3 else None
        if index is None and world_size > 1 and stage == "val":
            raise UserError(
                "LossDiagnosis under DDP needs val batches (x, y, index): padded repeats can only be dropped by index"
            )
        return x, y, index

    def _logits(self, pl_module: L.LightningModule, outputs: Any, x: torch.Tensor, n: int) -> torch.Tensor:
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if logits is None:
            with torch.no_grad():
                logits = pl_module(x)
        if not torch.is_tensor(logits) or logits.ndim != 2 or len(logits) != n:
            raise UserError(
                f"LossDiagnosis needs {type(pl_module).__name__}.forward(x) to return logits of shape (batch, classes), "
                f"got {tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__}"
            )
        return logits.detach()

    # -- recording ------------------------------------------------------------------------------
    def _record(
        self, stage: str, index: torch.Tensor | None, y: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        """Record one batch; a batch without ``index`` gets its positions in the loader order. Returns the index."""
        index = self._record_index(stage, index, len(y), y.device)
        self.recorders[stage].update(index, y, logits)
        self._seen[stage] = True
        return index

    def _record_index(
        self, stage: str, index: torch.Tensor | None, n: int, device: torch.device
    ) -> torch.Tensor:
        """``index``, or for a batch without one its positions in this epoch's loader order."""
        if index is None:
            start = self._offset[stage]
            index = torch.arange(start, start + n, device=device)
            self._offset[stage] = start + n
        return index

    def _epoch_records(self, pl_module: L.LightningModule, stage: str) -> SampleRecords:
        """This epoch's gathered records of ``stage`` (on every rank: it syncs); the module's when it keeps them."""
        if self._module_records:
            return pl_module.epoch_records(stage)  # type: ignore[operator]
        return self.recorders[stage].compute()

    def _start_epoch(self, stage: str) -> None:
        self.recorders[stage].reset()
        self._seen[stage] = False
        self._offset[stage] = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_epoch("train")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_epoch("val")
        self._figure_images = {}
        self._collect_images = self._figures_due(trainer) and tensorboard_writer(trainer) is not None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._module_records:
            self._seen["train"] = True
            return
        if not self._train_indexed:
            return
        x, y, index = self._unpack(batch, "train", trainer.world_size)
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if index is None or logits is None:  # shuffled without index, or no logits: no train records
            self._train_indexed = False
            log.info("LossDiagnosis: training batches carry no index or no logits; train/ records are off")
            return
        self._record("train", index, y, self._logits(pl_module, outputs, x, len(y)))

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or dataloader_idx != 0:
            return
        if self._module_records:
            self._seen["val"] = True
            if not self._collect_images:
                return
            x, y, index = self._unpack(batch, "val", trainer.world_size)
            index = self._record_index("val", index, len(y), y.device)
        else:
            x, y, index = self._unpack(batch, "val", trainer.world_size)
            index = self._record("val", index, y, self._logits(pl_module, outputs, x, len(y)))
        if self._collect_images and x.ndim == 4:
            self._figure_images.update(zip(index.tolist(), x.detach().float().cpu(), strict=True))

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
            rec = self._evaluate_loader(trainer, pl_module, trainer.val_dataloaders, "val")
            if rec is not None:
                self._cap = loss_cap_from_initial(rec.cross_entropy, self.k)
        if self.save_initial_checkpoint and trainer.global_rank == 0:
            ckpt = {"state_dict": self.initial, "epoch": -1, "global_step": 0, "loss_cap": self._cap}
            atomic_torch_save(self.output_dir / INITIAL_CKPT, ckpt)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._resumed_at = trainer.current_epoch if trainer.ckpt_path else None
        initial = self.output_dir / INITIAL_CKPT
        if trainer.ckpt_path and self.initial is None and initial.is_file():
            # resumed: the untrained weights were saved by the first attempt
            ckpt = load_checkpoint(initial)
            self.initial, self._cap = ckpt["state_dict"], ckpt.get("loss_cap")

    # -- every epoch ----------------------------------------------------------------------------
    def _figures_due(self, trainer: L.Trainer) -> bool:
        every = self.figures_every_n_epochs
        return every > 0 and ((trainer.current_epoch + 1) % every == 0 or is_last_epoch(trainer))

    # Every epoch only keeps the gathered logits (``_keep``); ``_flush`` evaluates the pending epochs as one
    # vectorised block and sends each epoch's values to the loggers at step = epoch. Per epoch, the evaluation
    # (temperature fits, ECE, loss tails) costs ~10x the framework overhead of a few hundred samples' worth of
    # computation; a block of ten costs about what one epoch did. A flush happens every
    # ``flush_every_n_epochs`` epochs or ``flush_every_s`` seconds (so a slow run's TensorBoard is never
    # behind), and when training ends or fails; a figure epoch only keeps its worst samples' inputs until then.
    # Pending epochs and figures travel in the checkpoints (``state_dict``), so a resumed run logs and records them.
    def _keep(self, trainer: L.Trainer, stage: str, rec: SampleRecords) -> None:
        if trainer.global_rank != 0:
            return
        if stage not in self._targets:
            self._targets[stage] = rec.target.detach().cpu()
        self._pending[stage].append((trainer.current_epoch, rec.logits.detach().float().cpu()))

    def _flush_due(self, trainer: L.Trainer) -> bool:
        pending = max(len(self._pending["val"]), len(self._pending["train"]))
        if not pending:
            return False
        # every pending epoch of a stage has the same shape
        held = sum(len(items) * items[0][1].nbytes for items in self._pending.values() if items)
        return (
            pending >= self.flush_every_n_epochs
            or time.monotonic() - self._last_flush >= self.flush_every_s
            or held >= MAX_PENDING_BYTES
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train_indexed and self._seen["train"]:
            rec = self._epoch_records(pl_module, "train")
            if self._train_info is None and trainer.global_rank == 0:
                self._train_info = self._split_info(trainer, rec, "train")
            self._keep(trainer, "train", rec)
        # here, not at the val epoch's end: Lightning validates before the training epoch ends
        if trainer.global_rank == 0 and self._flush_due(trainer):
            self._flush(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._seen["val"]:
            return
        rec = self._epoch_records(pl_module, "val")
        if trainer.global_rank != 0:
            return
        if self.samples is None:
            self.samples = Samples(
                classes=self._class_names(trainer, rec),
                loss_cap=self.loss_cap(pl_module),
                val=self._split_info(trainer, rec, "val"),
                objective=self._objective(pl_module),
            )
        self._keep(trainer, "val", rec)
        if self._collect_images:
            self._keep_figure_images(trainer.current_epoch, rec)

    def _keep_figure_images(self, epoch: int, rec: SampleRecords) -> None:
        """At a figure epoch, keep the inputs of its worst val samples (by this epoch's loss, as the evaluation will
        rank them) until the epoch's block is evaluated and its figures drawn (see :meth:`_draw_figures`)."""
        assert self.samples is not None
        # what the evaluation will rank: this epoch's kept CPU float32 logits
        _, logits = self._pending["val"][-1]
        losses = per_sample_cross_entropy(logits, self._targets["val"]).numpy()
        worst = {
            int(self.samples.val.index[i]) for i in worst_indices(losses, min(self.worst_k, WORST_TILES))
        }
        self._pending_figures.append((epoch, {i: x for i, x in self._figure_images.items() if i in worst}))
        self._figure_images = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # before any callback's on_fit_end (e.g. the HParams summary reads the logged history)
        if trainer.global_rank == 0:
            self._flush(trainer, pl_module)
            self._crossfit_last()
            self._draw_figures(trainer, now=True)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Log and record the epochs finished before the failure (a failing flush must not hide the error)."""
        if trainer.global_rank != 0:
            return
        try:
            self._flush(trainer, pl_module)
            self._crossfit_last()
            self._draw_figures(trainer, now=True)
        except Exception as err:
            log.warning("LossDiagnosis: could not record the last epochs after the failure: %s", err)

    def state_dict(self) -> dict[str, Any]:
        # each stage's pending logits as one stacked tensor: a checkpoint pays per stored tensor
        pending = {
            stage: {
                "epochs": [e for e, _ in items],
                "logits": torch.stack([z for _, z in items]) if items else None,
            }
            for stage, items in self._pending.items()
        }
        return {
            "logged_through": self._logged_through,
            "pending": pending,
            "pending_figures": list(self._pending_figures),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the checkpoint's not-yet-logged epochs back at once, so a checkpoint this run saves before its
        first flush still holds them (a second resume then finds them)."""
        self._logged_through = int(state_dict["logged_through"])
        self._journal_before = self._logged_through + 1  # the journals keep the epochs logged before
        for stage, block in state_dict["pending"].items():
            if block["logits"] is not None:
                restored = list(zip(block["epochs"], block["logits"].unbind(0), strict=True))
                self._pending[stage] = [*restored, *self._pending[stage]]
        self._pending_figures = [*state_dict.get("pending_figures", []), *self._pending_figures]

    def _open_journals(self, trainer: L.Trainer) -> None:
        """The val and dynamics journals; a resumed run first reads back the epochs it keeps.

        With this callback's checkpoint state, the journals hold the epochs through ``logged_through`` and the
        checkpoint (already back in ``_pending``, see :meth:`load_state_dict`) the ones after it; without (an older
        checkpoint), every epoch before the resumed one.
        """
        assert self.samples is not None and self._journal is None
        self._journal = val_journal(self.output_dir / VAL_JOURNAL, len(self.samples.val.index))
        n_train = len(self._targets["train"]) if "train" in self._targets else 0
        if n_train:
            self._dynamics_journal = dynamics_journal(self.output_dir / TRAIN_JOURNAL, n_train)
        journals = [j for j in (self._journal, self._dynamics_journal) if j is not None]
        if self._resumed_at is None:
            for journal in journals:
                journal.reset()
            return
        before = self._journal_before if self._journal_before is not None else self._resumed_at
        for epoch, record in self._journal.restore(before_epoch=before):
            self.samples.add_epoch(epoch, record_evaluation(record))
        if self.samples.val_epochs:
            self._lowest_val_loss = float(np.nanmin(mean_losses(self.samples.history.loss), initial=math.inf))
        if self._dynamics_journal is not None:
            restored_dynamics = self._dynamics_journal.restore(before_epoch=before)
            self._pending_dynamics += [(e, r["p_given"], r["margin"]) for e, r in restored_dynamics]

    def _flush(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate the pending epochs as one block; log, journal and record each at its epoch."""
        self._last_flush = time.monotonic()
        if self.samples is None or not (self._pending["val"] or self._pending["train"]):
            return
        if self._journal is None:
            self._open_journals(trainer)
        cap = self.loss_cap(pl_module)
        self.samples.loss_cap = cap
        values: dict[int, dict[str, float]] = {}
        losses: dict[str, tuple[list[int], np.ndarray]] = {}  # per stage: (epochs, per-sample losses (E, N))
        if self._pending["val"]:
            epochs = [e for e, _ in self._pending["val"]]
            logits = torch.stack([z for _, z in self._pending["val"]])
            target = self._targets["val"]
            # the cross-fitted calibration only where the verdict may read it: the epochs at the lowest val loss
            # so far, and the last one (_crossfit_last, at the end)
            mean = mean_losses(per_sample_cross_entropy(logits, target).numpy())
            crossfit = at_lowest_so_far(mean, self._lowest_val_loss)
            self._lowest_val_loss = float(np.fmin.reduce(mean, initial=self._lowest_val_loss))
            ev = evaluate_epochs(logits, target, crossfit=torch.from_numpy(crossfit))
            self._uncrossfitted_last = None if crossfit[-1] else (epochs[-1], logits[-1].clone())
            scalars = {
                **epoch_scalar_block(logits, target, ev),
                **loss_distributions(torch.from_numpy(ev.loss), cap),
            }
            for i, epoch in enumerate(epochs):
                values.setdefault(epoch, {}).update({f"val/{k}": float(v[i]) for k, v in scalars.items()})
                self.samples.add_epoch(epoch, ev[i])
            self._journal.append_many(epochs, evaluation_record(ev))
            losses["val"] = epochs, ev.loss
        if self._pending["train"]:
            epochs = [e for e, _ in self._pending["train"]]
            logits = torch.stack([z for _, z in self._pending["train"]])
            target = self._targets["train"]
            ce = per_sample_cross_entropy(logits, target)
            scalars = loss_distributions(ce, cap)
            p_given, margin = (t.numpy().astype(np.float16) for t in given_label_dynamics(logits, target))
            for i, epoch in enumerate(epochs):
                values.setdefault(epoch, {}).update({f"train/{k}": float(v[i]) for k, v in scalars.items()})
                self._pending_dynamics.append((epoch, p_given[i], margin[i]))
            assert self._dynamics_journal is not None
            self._dynamics_journal.append_many(epochs, {"p_given": p_given, "margin": margin})
            losses["train"] = epochs, ce.numpy()
        # TensorBoard gets one event per epoch holding its scalars and histograms (Lightning's stock logger would
        # write one per scalar), the other loggers the scalars through their log_metrics
        tensorboard = tensorboard_logger(trainer)
        writer = tensorboard.experiment if tensorboard is not None else None
        others = [logger for logger in trainer.loggers if logger is not tensorboard]
        histograms = self._histogram_values(losses) if writer is not None and self.histograms else {}
        for epoch in sorted(values):
            self.epoch_values.update(log_epoch_metrics(trainer, values[epoch], epoch, loggers=others))
            if writer is not None and not trainer.sanity_checking:  # as log_epoch_metrics
                summary = Summary(value=[*scalar_values(values[epoch]), *histograms.get(epoch, [])])
                writer.file_writer.add_summary(summary, global_step=epoch)
        if writer is not None:
            # TensorBoard's writer thread checksums every event byte in Python. Left to work through the block
            # beside training, it holds the GIL in turns with the training loop and slows the next epochs by more
            # than this wait (~0.5 ms per epoch on the default run); and TensorBoard shows the block at once
            writer.flush()
        self._logged_through = max(values)
        self._pending = {stage: [] for stage in STAGES}
        recorded = len(self.samples.epochs)
        if self.write_every_n_epochs and recorded - self._saved_at >= self.write_every_n_epochs:
            self.samples.save(self.output_dir / SAMPLES_FILE, durable=False)
            self._saved_at = recorded
        self._draw_figures(trainer)

    def _crossfit_last(self) -> None:
        """Give the last evaluated val epoch its cross-fitted calibration, when training ends (a flush before
        cannot know which epoch will be the last): in ``samples`` and, as a newer record of it, in the journal."""
        if self._uncrossfitted_last is None or self.samples is None or self._journal is None:
            return
        epoch, logits = self._uncrossfitted_last
        self._uncrossfitted_last = None
        if self.samples.epochs and self.samples.epochs[-1] == epoch:
            ev = evaluate_logits(logits, self._targets["val"])
            self.samples.val_epochs[-1] = ev
            self._journal.append(epoch, evaluation_record(ev))

    def _draw_figures(self, trainer: L.Trainer, now: bool = False) -> None:
        """Draw the pending figure epochs' reliability diagram and worst-samples grid into TensorBoard.

        Drawing takes ~0.1-0.2 s per epoch whatever the model. A run whose epochs take longer gets its figures
        when their block is evaluated; a run whose figures would take more than :data:`FIGURE_TIME_SHARE` of its
        training time gets them when training ends (``now``), at the same steps: the same images, later.
        """
        writer = tensorboard_writer(trainer)
        if writer is None or self.samples is None:
            self._pending_figures = []
            return
        ready = [(epoch, images) for epoch, images in self._pending_figures if epoch <= self._logged_through]
        if not ready or not (now or self._draw_s <= FIGURE_TIME_SHARE * (time.monotonic() - self._drawn_at)):
            return
        start = time.monotonic()
        for epoch, images in ready:
            ev = self.samples.val_epochs[self.samples.epochs.index(epoch)]
            fig = reliability_figure(
                ev.conf, ev.correct(self.samples.val.target), title=f"val, epoch {epoch}"
            )
            path = epoch_figure_path(self.output_dir, "reliability", epoch)
            write_figure(path, fig, writer, "val/reliability", epoch)
            if images and self.worst_k > 0:
                fig = worst_figure(self.samples, ev, images, self.worst_k, epoch)
                path = epoch_figure_path(self.output_dir, "worst_samples", epoch)
                write_figure(path, fig, writer, "val/worst_samples", epoch)
        self._draw_s = (time.monotonic() - start) / len(ready)
        self._drawn_at = time.monotonic()
        self._pending_figures = [
            (e, images) for e, images in self._pending_figures if e > self._logged_through
        ]

    @staticmethod
    def _histogram_values(
        blocks: Mapping[str, tuple[list[int], np.ndarray]],
    ) -> dict[int, list[Summary.Value]]:
        """``<stage>/loss_per_sample`` for a block of epochs (``{stage: (epochs, losses (E, N))}``), by epoch: every
        stage's histogram of that epoch. :data:`HISTOGRAM_BINS` equal-width bins (a linear axis shows the tail;
        TensorBoard's stock exponential buckets cost twice as much), counted for the whole block at once."""
        values: dict[int, list[Summary.Value]] = {}
        for stage, (epochs, losses) in blocks.items():
            h = equal_width_histograms(losses, bins=HISTOGRAM_BINS)
            for i, epoch in enumerate(epochs):
                if not h["num"][i]:
                    continue
                proto = HistogramProto(
                    min=h["min"][i],
                    max=h["max"][i],
                    num=h["num"][i],
                    sum=h["sum"][i],
                    sum_squares=h["sum_squares"][i],
                    # right bin limits, after an empty bin that carries the left edge (as TensorBoard's own)
                    bucket_limit=h["edges"][i].tolist(),
                    bucket=[0.0, *h["counts"][i].tolist()],
                )
                values.setdefault(epoch, []).append(
                    Summary.Value(tag=f"{stage}/loss_per_sample", histo=proto)
                )
        return values

    # -- what the data can tell ------------------------------------------------------------------
    @staticmethod
    def _class_names(trainer: L.Trainer, rec: SampleRecords) -> list[str]:
        names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
        n_classes = rec.logits.shape[1]
        if names is not None and len(names) == n_classes:
            return [str(n) for n in names]
        return [str(c) for c in range(n_classes)]

    @staticmethod
    def _objective(pl_module: L.LightningModule) -> str:
        """The training loss's name, when the module saved it as hyperparameter ``loss`` (else ``""``)."""
        name = getattr(pl_module, "hparams", {}).get("loss", "")
        return name if isinstance(name, str) else ""

    @staticmethod
    def _split_info(trainer: L.Trainer, rec: SampleRecords, stage: str) -> SplitInfo:
        paths = getattr(getattr(trainer, "datamodule", None), f"{stage}_paths", None)
        index = rec.index.cpu().numpy()
        if paths is not None and len(paths) <= int(index.max(initial=-1)):
            paths = None  # paths that do not cover every index name nothing
        return SplitInfo.create(index, rec.target.cpu().numpy(), list(paths) if paths else None)

    # -- end of fit -----------------------------------------------------------------------------
    @staticmethod
    def _first(loader: Any) -> Any:
        """The (first) loader of ``trainer.val_dataloaders`` / ``train_dataloader``, or ``None``."""
        if isinstance(loader, list | tuple):
            return loader[0] if loader else None
        return loader

    def _evaluate_loader(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loader: Any, stage: str
    ) -> SampleRecords | None:
        """``pl_module``'s outputs on every batch of ``loader`` (gathered over ranks)."""
        loader = self._first(loader)
        if loader is None:
            return None
        recorder, offset = SampleRecorder().to(pl_module.device), 0
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                for batch in loader:
                    x, y, index = self._unpack(
                        move_data_to_device(batch, pl_module.device), stage, trainer.world_size
                    )
                    if index is None:
                        if stage == "train":
                            return None  # a shuffled train order cannot be told apart without an index
                        index = torch.arange(offset, offset + len(y), device=y.device)
                        offset += len(y)
                    recorder.update(index, y, self._logits(pl_module, None, x, len(y)))
        finally:
            pl_module.train(was_training)  # also after the early return and an error
        return recorder.compute()

    def _inputs(self, loader: Any, stage: str, wanted: set[int]) -> dict[int, torch.Tensor]:
        """The inputs (on the CPU) of the samples ``wanted`` by index: image data only, no forward pass."""
        found: dict[int, torch.Tensor] = {}
        if not wanted:
            return found
        offset = 0
        for batch in self._first(loader) or ():
            x, y, index = self._unpack(batch, stage, 1)
            if x.ndim != 4 or (index is None and stage == "train"):
                return {}
            positions = index.tolist() if index is not None else range(offset, offset + len(y))
            offset += len(y)
            for pos, i in enumerate(positions):
                if i in wanted:
                    found[int(i)] = x[pos].detach().float().cpu()
        return found

    def _evaluate_models(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> dict[str, tuple[dict, int]]:
        """Evaluate initial, best (with ``reports``) and last weights by loading each into ``pl_module``.

        The last weights are loaded back at the end, whatever happens.
        """
        models: dict[str, dict[str, torch.Tensor]] = {}
        epochs: dict[str, int] = {}
        if self.initial is not None and self.reports:
            models["initial"], epochs["initial"] = self.initial, -1
        ckpt_cb = trainer.checkpoint_callback
        best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None and self.reports else ""
        if best and Path(best).is_file():
            ckpt = load_checkpoint(best)
            models["best"], epochs["best"] = ckpt["state_dict"], int(ckpt.get("epoch", -1))
        last = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        recorded = self.samples is not None and bool(self.samples.val_epochs)  # rank 0 only
        models["last"], epochs["last"] = last, self.samples.epochs[-1] if recorded else trainer.current_epoch
        outputs: dict[str, dict[str, SampleRecords | None]] = {}
        try:
            for name, state in models.items():
                pl_module.load_state_dict(state)
                outputs[name] = {
                    "val": self._evaluate_loader(trainer, pl_module, trainer.val_dataloaders, "val"),
                    "train": self._evaluate_loader(trainer, pl_module, trainer.train_dataloader, "train"),
                }
        finally:
            pl_module.load_state_dict(last)
        return {name: (outs, epochs[name]) for name, outs in outputs.items()}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            # every rank must take part in the evaluations (they gather); rank 0 has the samples
            flag = pl_module.all_gather(torch.tensor(self.samples is not None, device=pl_module.device))
            if not bool(flag.flatten()[0]):
                return
        elif self.samples is None or not self.samples.epochs:
            return
        evaluated = self._evaluate_models(trainer, pl_module)
        if trainer.global_rank != 0 or self.samples is None:
            return
        if self._train_info is not None and self.samples.train is None:
            self.samples.train = self._train_info
        self.samples.dynamics_epochs, self.samples.train_p_given, self.samples.train_margin = [], [], []
        for epoch, p_given, margin in self._pending_dynamics:
            self.samples.add_dynamics(epoch, p_given, margin)
        self.samples.models, self.samples.model_epoch = {}, {}
        for name, (outs, epoch) in evaluated.items():
            val, train = outs["val"], outs["train"]
            if val is None:
                continue
            self.samples.models[name] = {"val": evaluate_logits(val.logits, val.target)}
            if train is not None:
                self.samples.models[name]["train"] = evaluate_logits(train.logits, train.target)
                if self.samples.train is None:
                    self.samples.train = self._split_info(trainer, train, "train")
            self.samples.model_epoch[name] = epoch
        if not self.reports:
            self.samples.models, self.samples.model_epoch = {}, {}
        writer = tensorboard_writer(trainer)
        # the images the figures show, in one pass over each loader: the final worst val samples (the
        # worst-samples figure) and, for TensorBoard, the most suspect samples of each split
        worst = self.samples.val.index[worst_indices(self.samples.val_epochs[-1].loss, self.worst_k)].tolist()
        suspects = wanted_images(rank_run(self.samples), self.samples) if writer is not None else {}
        val_images = self._inputs(trainer.val_dataloaders, "val", {*worst, *suspects.get("val", ())})
        suspect_images = {"val": val_images}
        if "train" in suspects:
            suspect_images["train"] = self._inputs(trainer.train_dataloader, "train", set(suspects["train"]))
        final_images = {i: val_images[i] for i in worst if i in val_images}
        self.diagnosis = write_diagnosis(
            self.output_dir,
            self.samples,
            final_images or None,
            self.worst_k,
            writer,
            self.samples.epochs[-1],  # the last validation epoch: every figure and text is at step = epoch
            suspect_images=suspect_images if writer is not None else None,
        )
        announce(
            log, f"{self.diagnosis.summary}\nFull diagnosis: {display_path(self.output_dir / DIAGNOSIS_FILE)}"
        )
