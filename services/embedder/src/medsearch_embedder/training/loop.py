"""The epochs: train, validate, keep the best backbone, checkpoint, stop early or on time.

A checkpoint after every epoch holds the backbone, the head, the optimizer's moments and
where training stands (epoch, best mean AUC and its epoch, epochs without improvement,
seconds trained), so `--resume` continues as if never stopped. The served weights file is
rewritten whenever the validation mean AUC improves: it always holds the best epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

from medsearch_embedder.preprocessing import INPUT_SIZE
from medsearch_embedder.training.errors import TrainingDataError, TrainingDiverged
from medsearch_embedder.training.metrics import auc_per_finding, mean_auc
from medsearch_embedder.training.model import FindingClassifier, Objective
from medsearch_embedder.training.outputs import CHECKPOINTS, HISTORY_FILE, WEIGHTS_FILE
from medsearch_embedder.training.pipeline import ImageDecoder

# The latest two: one to resume from, one in case the latest was cut off mid-write.
KEEP_CHECKPOINTS = 2


@dataclass(frozen=True)
class Schedule:
    epochs: int
    steps_per_epoch: int | None  # at most this many batches an epoch; None: all of them
    patience: int  # epochs without a better validation mean AUC before stopping
    max_minutes: float | None  # no epoch starts once this run has trained this long


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float  # the whole objective
    validation_loss: float  # the weighted cross-entropy alone: SupCon depends on batch make-up
    mean_auc: float
    auc: dict[str, float | None]
    steps: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainingResult:
    history: list[EpochRecord]  # every epoch, those before a resume included
    best_epoch: int
    resumed_at: int | None
    stopped: str  # "epochs", "early stopping" or "time budget"
    seconds: float  # training time over every run of this output folder

    @property
    def best(self) -> EpochRecord:
        return next(record for record in self.history if record.epoch == self.best_epoch)


def training_device() -> str:
    """The device TensorFlow trains on, in words; a GPU's memory is taken as needed, not all at once."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"CPU ({os.cpu_count()} cores)"
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # initialised earlier in this process: keep its setting
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "unnamed")
    return f"GPU: {name}"


class Trainer:
    def __init__(
        self,
        classifier: FindingClassifier,
        objective: Objective,
        optimizer: keras.optimizers.Optimizer,
        decoder: ImageDecoder,
        out: Path,
        say: Callable[[str], None],
    ) -> None:
        self.classifier = classifier
        self.objective = objective
        self.optimizer = optimizer
        self.decoder = decoder
        self.out = out
        self.say = say
        # Built now, not at the first step: a checkpoint can only restore variables that exist.
        optimizer.build(classifier.trainable_variables)
        self.epoch = tf.Variable(0, dtype=tf.int64)
        self.best_auc = tf.Variable(-1.0, dtype=tf.float64)
        self.best_epoch = tf.Variable(0, dtype=tf.int64)
        self.stale_epochs = tf.Variable(0, dtype=tf.int64)
        self.seconds = tf.Variable(0.0, dtype=tf.float64)
        checkpoint = tf.train.Checkpoint(
            backbone=classifier.backbone,
            head=classifier.head,
            optimizer=optimizer,
            epoch=self.epoch,
            best_auc=self.best_auc,
            best_epoch=self.best_epoch,
            stale_epochs=self.stale_epochs,
            seconds=self.seconds,
        )
        self.checkpoints = tf.train.CheckpointManager(checkpoint, str(out / CHECKPOINTS), KEEP_CHECKPOINTS)
        images = tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE), tf.uint8)
        labels = tf.TensorSpec((None, classifier.head.units), tf.float32)
        self._train_step = tf.function(self._train_batch, input_signature=[images, labels])
        self._validation_step = tf.function(self._validation_batch, input_signature=[images])

    def resume(self) -> None:
        """Restore the latest checkpoint: the model, the optimizer and where training stood."""
        latest = self.checkpoints.latest_checkpoint
        self.checkpoints.checkpoint.restore(latest).assert_existing_objects_matched()

    def fit(
        self,
        train: tf.data.Dataset,
        validation: tf.data.Dataset,
        validation_labels: NDArray[np.float32],
        findings: list[str],
        schedule: Schedule,
        *,
        resumed: bool,
    ) -> TrainingResult:
        """Run the epochs left after the last checkpointed one (all of them in a new run)."""
        start = int(self.epoch.numpy()) + 1
        history = [record for record in _read_history(self.out) if record.epoch < start]
        if resumed:
            self.say(
                f"resuming at epoch {start} from checkpoint {Path(self.checkpoints.latest_checkpoint).name} "
                f"(best mean AUC {float(self.best_auc.numpy()):.4f} at epoch {int(self.best_epoch.numpy())})"
            )
        stopped = "epochs"
        if int(self.stale_epochs.numpy()) >= schedule.patience:
            stopped = "early stopping"
            self.say("nothing to train: the run stopped early; raise --patience to train further")
        elif start > schedule.epochs:
            self.say(f"nothing to train: {start - 1} epochs are done; raise --epochs to train further")
        began = time.perf_counter()
        for epoch in range(start, schedule.epochs + 1 if stopped == "epochs" else start):
            record = self._run_epoch(epoch, train, validation, validation_labels, findings, schedule)
            history.append(record)
            improved = record.mean_auc > float(self.best_auc.numpy())
            if improved:
                self.best_auc.assign(record.mean_auc)
                self.best_epoch.assign(epoch)
                self.stale_epochs.assign(0)
                _save_backbone(self.classifier.backbone, self.out / WEIGHTS_FILE)
            else:
                self.stale_epochs.assign_add(1)
            self.epoch.assign(epoch)
            self.seconds.assign_add(record.seconds)
            self.checkpoints.save(checkpoint_number=epoch)
            _write_history(self.out, history)
            self.say(
                f"epoch {epoch}/{schedule.epochs}: train loss {record.train_loss:.4f}, validation loss "
                f"{record.validation_loss:.4f}, mean AUC {record.mean_auc:.4f}, {record.seconds:.1f} s"
                + (" (best so far)" if improved else "")
            )
            if epoch == schedule.epochs:
                break
            if int(self.stale_epochs.numpy()) >= schedule.patience:
                stopped = "early stopping"
                self.say(
                    f"stopped early: no better validation mean AUC in the last {schedule.patience} epochs"
                )
                break
            if schedule.max_minutes is not None and time.perf_counter() - began > schedule.max_minutes * 60:
                stopped = "time budget"
                self.say(f"stopped: this run has trained longer than --max-minutes {schedule.max_minutes:g}")
                break
        return TrainingResult(
            history=history,
            best_epoch=int(self.best_epoch.numpy()),
            resumed_at=start if resumed else None,
            stopped=stopped,
            seconds=float(self.seconds.numpy()),
        )

    def _run_epoch(
        self,
        epoch: int,
        train: tf.data.Dataset,
        validation: tf.data.Dataset,
        validation_labels: NDArray[np.float32],
        findings: list[str],
        schedule: Schedule,
    ) -> EpochRecord:
        began = time.perf_counter()
        batches = train.take(schedule.steps_per_epoch) if schedule.steps_per_epoch else train
        losses = [float(self._train_step(images, labels)) for images, labels in self._read(batches)]
        train_loss = float(np.mean(losses)) if losses else math.nan
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"the training loss is {train_loss} in epoch {epoch}: lower --learning-rate "
                f"(the checkpoint of epoch {epoch - 1} is kept)"
            )
        logits = np.concatenate(
            [np.asarray(self._validation_step(images)) for images, _ in self._read(validation)]
        )
        auc = auc_per_finding(logits, validation_labels, findings)
        validation_loss = float(
            self.objective.classification(tf.constant(validation_labels), tf.constant(logits))
        )
        return EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            validation_loss=validation_loss,
            mean_auc=mean_auc(auc),
            auc=auc,
            steps=len(losses),
            seconds=time.perf_counter() - began,
        )

    def _read(self, batches: tf.data.Dataset) -> Iterator[tuple[tf.Tensor, tf.Tensor]]:
        """The batches; a file that cannot be decoded becomes an error that names it."""
        try:
            yield from batches
        except tf.errors.OpError:
            if self.decoder.failure is not None:
                raise TrainingDataError(self.decoder.failure) from None
            raise

    def _train_batch(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        variables = self.classifier.trainable_variables
        with tf.GradientTape() as tape:
            # training=True: batch normalisation learns X-ray statistics too, as in CheXNet's fine-tuning.
            pooled, logits = self.classifier(images, training=True)
            loss = self.objective(labels, logits, pooled)
            # Under mixed precision the loss is scaled up so float16 gradients do not underflow;
            # the LossScaleOptimizer divides them back. Otherwise scale_loss changes nothing.
            scaled = self.optimizer.scale_loss(loss)
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        return loss

    def _validation_batch(self, images: tf.Tensor) -> tf.Tensor:
        return self.classifier(images, training=False)[1]


def _save_backbone(backbone: keras.Model, path: Path) -> None:
    """`save_weights` of the backbone alone, replaced in one step: a crash never leaves half a file."""
    partial = path.with_name(path.name.replace(".weights.h5", ".partial.weights.h5"))
    backbone.save_weights(str(partial))
    os.replace(partial, path)


def _read_history(out: Path) -> list[EpochRecord]:
    path = out / HISTORY_FILE
    if not path.is_file():
        return []
    return [EpochRecord(**record) for record in json.loads(path.read_text(encoding="utf-8"))]


def _write_history(out: Path, history: list[EpochRecord]) -> None:
    text = json.dumps([record.to_json() for record in history], indent=2)
    (out / HISTORY_FILE).write_text(text + "\n", encoding="utf-8")
