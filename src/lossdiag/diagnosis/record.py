"""The record stage: each epoch's per-sample logits kept, evaluated in blocks of epochs, journaled, resumable.

Every epoch only keeps the gathered logits (:meth:`Recorder.keep`); :meth:`Recorder.flush` evaluates the pending
epochs as one vectorised block and returns each epoch's values for the loggers. Per epoch, the evaluation
(temperature fits, ECE, loss tails) costs ~10x the framework overhead of a few hundred samples' worth of
computation; a block of ten costs about what one epoch did. A flush is due every ``flush_every_n_epochs`` epochs
or ``flush_every_s`` seconds (so a slow run's TensorBoard is never behind), or before the pending logits pass
:data:`MAX_PENDING_BYTES`. Evaluated val epochs and the training dynamics go to the journals on disk
(:mod:`lossdiag.rundir.journal`), which are ``samples``' history: nothing of it is held in memory; pending epochs
travel in :meth:`Recorder.state_dict`, so a
resumed run records them.

The per-epoch scalars are one table, :data:`SCALARS`: a new scalar is a key of one of its functions (or a new row).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from lossdiag.diagnosis.judge.stats import mean_losses
from lossdiag.diagnosis.samples import Samples, SplitInfo
from lossdiag.functional.breakdown import epoch_scalar_block, loss_distributions
from lossdiag.functional.losses import per_sample_cross_entropy
from lossdiag.functional.outputs import Evaluation, evaluate_epochs
from lossdiag.functional.suspects import given_label_dynamics
from lossdiag.rundir.journal import (
    Journal,
    dynamics_journal,
    val_journal,
)
from lossdiag.rundir.paths import SAMPLES_FILE, TRAIN_JOURNAL, VAL_JOURNAL

STAGES = ("train", "val")
# pending logits are flushed before they exceed this (large val sets, many classes): memory and checkpoint size
MAX_PENDING_BYTES = 64 * 2**20


class StageBlock(NamedTuple):
    """A block of pending epochs of one stage, evaluated: what the scalar functions read."""

    epochs: list[int]
    logits: torch.Tensor  # (E, N, C) float32, CPU
    target: torch.Tensor  # (N,)
    losses: torch.Tensor  # (E, N) per-sample cross-entropy, float32
    evaluation: Evaluation | None  # val only: the full per-sample evaluation with calibration
    cap: float


# per-epoch scalars, each row (stage, function of a block -> {name: (E,) array}), logged as "<stage>/<name>"
SCALARS: tuple[tuple[str, Callable[[StageBlock], dict[str, Any]]], ...] = (
    ("val", lambda b: epoch_scalar_block(b.logits, b.target, b.evaluation)),
    ("val", lambda b: loss_distributions(b.losses, b.cap)),
    ("train", lambda b: loss_distributions(b.losses, b.cap)),
)


class Block(NamedTuple):
    """What one flush evaluated: every epoch's scalars, and each stage's per-sample losses (for histograms)."""

    values: dict[int, dict[str, float]]
    losses: dict[str, tuple[list[int], np.ndarray]]


class Recorder:
    """Keeps per-epoch logits of the ``train`` and ``val`` stages and turns them into :class:`Samples`."""

    def __init__(
        self,
        output_dir: str | Path,
        flush_every_n_epochs: int = 50,
        flush_every_s: float = 2.0,
        write_every_n_epochs: int = 50,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.flush_every_n_epochs = int(flush_every_n_epochs)
        self.flush_every_s = float(flush_every_s)
        self.write_every_n_epochs = int(write_every_n_epochs)
        self.samples: Samples | None = None
        self.train_info: SplitInfo | None = None
        # per-epoch logits not yet evaluated, by stage: [(epoch, logits (N, C))]; each split's labels
        self.pending: dict[str, list[tuple[int, torch.Tensor]]] = {stage: [] for stage in STAGES}
        self.targets: dict[str, torch.Tensor] = {}
        self.logged_through = -1  # the last epoch evaluated and handed to the loggers
        self.resumed_at: int | None = None  # the epoch a resumed run starts at
        self._journal_before: int | None = (
            None  # from a checkpoint's state: the journals keep epochs before it
        )
        self._journals: dict[str, Journal] = {}
        self._last_flush = time.monotonic()
        self._saved_at = 0  # how many val epochs samples.npz held when last written
        self._lowest_val_loss = math.inf  # the lowest mean val loss of the epochs evaluated so far
        # the two val epochs the verdict's calibration reads, (epoch, logits): the lowest mean loss so far (first on
        # ties) and the latest; they get the cross-fitted calibration when training ends (see finish). The lowest
        # travels in the state; the latest does not (a run resumed after its last val epoch leaves it without)
        self._lowest_logits: tuple[int, torch.Tensor] | None = None
        self._latest_logits: tuple[int, torch.Tensor] | None = None

    # -- every epoch ---------------------------------------------------------------------------------------
    def keep(self, stage: str, epoch: int, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Keep one epoch's gathered logits (N, C) of ``stage`` (rows in the order of ``target``)."""
        if stage not in self.targets:
            self.targets[stage] = target.detach().cpu()
        self.pending[stage].append((int(epoch), logits.detach().float().cpu()))

    def flush_due(self) -> bool:
        pending = max(len(self.pending["val"]), len(self.pending["train"]))
        if not pending:
            return False
        # every pending epoch of a stage has the same shape
        held = sum(len(items) * items[0][1].nbytes for items in self.pending.values() if items)
        return (
            pending >= self.flush_every_n_epochs
            or time.monotonic() - self._last_flush >= self.flush_every_s
            or held >= MAX_PENDING_BYTES
        )

    def flush(self, cap: float) -> Block | None:
        """Evaluate the pending epochs as one block; record and journal each; return their values."""
        self._last_flush = time.monotonic()
        if self.samples is None or not (self.pending["val"] or self.pending["train"]):
            return None
        if not self._journals:
            self._open_journals()
        self.samples.loss_cap = cap
        blocks = {stage: self._evaluate(stage, cap) for stage in STAGES if self.pending[stage]}
        values: dict[int, dict[str, float]] = {}
        for stage, scalars in SCALARS:
            block = blocks.get(stage)
            if block is None:
                continue
            for name, column in scalars(block).items():
                for i, epoch in enumerate(block.epochs):
                    values.setdefault(epoch, {})[f"{stage}/{name}"] = float(column[i])
        self.logged_through = max(values)
        self.pending = {stage: [] for stage in STAGES}
        recorded = len(self.samples.epochs)
        if self.write_every_n_epochs and recorded - self._saved_at >= self.write_every_n_epochs:
            self.samples.save(self.output_dir / SAMPLES_FILE, durable=False)
            self._saved_at = recorded
        losses = {stage: (b.epochs, b.losses.numpy()) for stage, b in blocks.items()}
        return Block(dict(sorted(values.items())), losses)

    def _evaluate(self, stage: str, cap: float) -> StageBlock:
        epochs = [e for e, _ in self.pending[stage]]
        logits = torch.stack([z for _, z in self.pending[stage]])
        target = self.targets[stage]
        if stage == "val":
            return self._evaluate_val(epochs, logits, target, cap)
        p_given, margin = (t.numpy().astype(np.float16) for t in given_label_dynamics(logits, target))
        self._journals["train"].append_many(epochs, {"p_given": p_given, "margin": margin})
        return StageBlock(epochs, logits, target, per_sample_cross_entropy(logits, target), None, cap)

    def _evaluate_val(
        self, epochs: list[int], logits: torch.Tensor, target: torch.Tensor, cap: float
    ) -> StageBlock:
        assert self.samples is not None
        # no cross-fitted calibration here: the verdict reads it for two epochs only, given them in finish()
        ev = evaluate_epochs(logits, target, crossfit=torch.zeros(len(epochs), dtype=torch.bool))
        mean = mean_losses(ev.loss)
        lowest = int(np.argmin(mean))  # first on ties, as the verdict's min epoch
        if mean[lowest] < self._lowest_val_loss:
            self._lowest_val_loss = float(mean[lowest])
            self._lowest_logits = (epochs[lowest], logits[lowest].clone())
        self._latest_logits = (epochs[-1], logits[-1].clone())
        self.samples.add_epochs(epochs, ev)
        return StageBlock(epochs, logits, target, torch.from_numpy(ev.loss), ev, cap)

    def finish(self) -> None:
        """Give the lowest-loss and the last val epochs their cross-fitted calibration (repeated over random splits:
        two rows of temperature fits per split, paid once): in ``samples`` and, as newer records, in the journal."""
        if self.samples is None or "val" not in self._journals:
            return
        kept = {epoch: logits for epoch, logits in (self._lowest_logits, self._latest_logits) if logits is not None}
        kept = {epoch: logits for epoch, logits in kept.items() if epoch in self.samples.epochs}
        if not kept:
            return
        epochs = sorted(kept)
        ev = evaluate_epochs(torch.stack([kept[e] for e in epochs]), self.targets["val"])
        for i, epoch in enumerate(epochs):
            self.samples.replace_epoch(epoch, ev[i])
        self._latest_logits = None  # done: a second finish (after a failure) does not repeat it

    def take_split(self) -> None:
        """Put the training split's identity into ``samples`` (at the end of fit; its dynamics are in the journal)."""
        assert self.samples is not None
        if self.train_info is not None and self.samples.train is None:
            self.samples.train = self.train_info

    # -- resume --------------------------------------------------------------------------------------------
    def _open_journals(self) -> None:
        """The val and dynamics journals; a resumed run first reads back the epochs it keeps.

        With this recorder's checkpoint state, the journals hold the epochs through ``logged_through`` and the
        checkpoint (already back in ``pending``, see :meth:`load_state_dict`) the ones after it; without (an older
        checkpoint), every epoch before the resumed one.
        """
        assert self.samples is not None
        samples = self.samples
        self._journals["val"] = val_journal(self.output_dir / VAL_JOURNAL, len(samples.val.index), len(samples.classes))
        if "train" in self.targets:
            self._journals["train"] = dynamics_journal(
                self.output_dir / TRAIN_JOURNAL, len(self.targets["train"])
            )
        # the journals are the samples' history from here on
        samples.val_journal, samples.dynamics = self._journals["val"], self._journals.get("train")
        if self.resumed_at is None:
            for journal in self._journals.values():
                journal.reset()
            return
        before = self._journal_before if self._journal_before is not None else self.resumed_at
        for journal in self._journals.values():
            journal.restore(before_epoch=before)
        loss = self._journals["val"].records()["loss"]
        if len(loss):
            self._lowest_val_loss = float(np.nanmin(loss.mean(1, dtype=np.float64), initial=math.inf))

    def state_dict(self) -> dict[str, Any]:
        # each stage's pending logits as one stacked tensor: a checkpoint pays per stored tensor
        pending = {
            stage: {
                "epochs": [e for e, _ in items],
                "logits": torch.stack([z for _, z in items]) if items else None,
            }
            for stage, items in self.pending.items()
        }
        return {"logged_through": self.logged_through, "pending": pending, "lowest": self._lowest_logits}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the checkpoint's not-yet-logged epochs back at once, so a checkpoint saved before the next flush
        still holds them (a second resume then finds them)."""
        self.logged_through = int(state["logged_through"])
        if state.get("lowest") is not None:
            self._lowest_logits = state["lowest"]
        self._journal_before = self.logged_through + 1  # the journals keep the epochs logged before
        for stage, block in state["pending"].items():
            if block["logits"] is not None:
                restored = list(zip(block["epochs"], block["logits"].unbind(0), strict=True))
                self.pending[stage] = [*restored, *self.pending[stage]]
