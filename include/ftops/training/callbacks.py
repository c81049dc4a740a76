"""What the Trainer reports as it goes: progress lines, per-epoch validation losses, and extra checkpoints.

Each ``*_callback`` builds a :class:`transformers.TrainerCallback` lazily, so importing this module stays
free of transformers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """One progress report, as logged every ``logging_steps``."""

    step: int
    max_steps: int
    epoch: float
    loss: float
    learning_rate: float
    tokens_per_s: float
    eta_s: float


@dataclass(frozen=True)
class Evaluation:
    """The validation loss at the end of one epoch."""

    step: int
    epoch: float
    eval_loss: float


def progress_callback(
    trainer_ref: list[Any], started: float, losses: list[float], on_progress: Callable[[Progress], None] | None
) -> Any:
    """Log step, loss, tokens/s and ETA at every Trainer log, and pass each report to ``on_progress``."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):  # type: ignore[misc]
        first_step: int | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.first_step = state.global_step  # > 0 when resumed from a checkpoint

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if not logs or "loss" not in logs:
                return
            losses.append(float(logs["loss"]))
            elapsed = time.monotonic() - started
            step, total = state.global_step, state.max_steps
            tokens = trainer_ref[0].tokens_seen if trainer_ref else 0
            done = max(step - (self.first_step or 0), 1)
            progress = Progress(
                step=step,
                max_steps=total,
                epoch=float(state.epoch or 0.0),
                loss=float(logs["loss"]),
                learning_rate=float(logs.get("learning_rate", math.nan)),
                tokens_per_s=tokens / max(elapsed, 1e-9),
                eta_s=elapsed / done * (total - step),
            )
            logger.info(
                "train step %d/%d epoch %.2f loss %.4f lr %.2e %.0f tokens/s ETA %.0fs",
                progress.step,
                progress.max_steps,
                progress.epoch,
                progress.loss,
                progress.learning_rate,
                progress.tokens_per_s,
                progress.eta_s,
            )
            if on_progress is not None:
                on_progress(progress)

    return _Progress()


def evaluation_callback(evaluations: list[Evaluation], on_evaluate: Callable[[Evaluation], None] | None) -> Any:
    """Collect (and log, and pass to ``on_evaluate``) the ``eval_loss`` of every evaluation during training."""
    from transformers import TrainerCallback

    class _Evaluations(TrainerCallback):  # type: ignore[misc]
        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                        **kw: Any) -> None:  # fmt: skip
            if not metrics or "eval_loss" not in metrics:  # e.g. the final check of the kept model
                return
            evaluation = Evaluation(int(state.global_step), float(state.epoch or 0.0), float(metrics["eval_loss"]))
            evaluations.append(evaluation)
            best = "" if state.best_metric is None else f" (best before: {state.best_metric:.4f})"
            logger.info("validation epoch %.0f step %d/%d: eval_loss %.4f%s", evaluation.epoch, evaluation.step,
                        state.max_steps, evaluation.eval_loss, best)  # fmt: skip
            if on_evaluate is not None:
                on_evaluate(evaluation)

    return _Evaluations()


def save_every_callback(every_steps: int) -> Any:
    """Also save a checkpoint every ``every_steps`` while checkpoints are otherwise saved at each epoch's
    evaluation (which ``load_best_model_at_end`` requires), so a crash mid-epoch loses at most that many steps.
    """
    from transformers import TrainerCallback

    class _SaveEvery(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step % every_steps == 0:
                control.should_save = True

    return _SaveEvery()
