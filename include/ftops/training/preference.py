"""Preference training (DPO) with TRL's :class:`trl.DPOTrainer` on a dataset version's preference pairs.

A pair is ``{"messages": [... up to and including the last user turn], "chosen": str, "rejected": str}``:
the chosen answer is a correction or a teacher's, the rejected one the served answer it replaces. DPO raises
the policy's log-likelihood of the chosen answer relative to the rejected one, measured against a frozen
reference model (the loss is ``-log σ(β · margin)``, the margin being the policy's log-ratio chosen/rejected
minus the reference's):

* ``method: lora``, from the base model: TRL wraps the base in a fresh LoRA adapter, and the reference is the
  same model with the adapter disabled (no second copy in memory);
* ``method: lora``, from an SFT adapter: the adapter trains on, and TRL keeps a frozen copy of it as the
  reference adapter (dropped before saving);
* ``method: full``: the reference is a frozen copy of the starting model (base, or the SFT model).

The result is saved like SFT's (an adapter on the base model, or the full model, with the tokenizer), so it is
evaluated, registered and served the same way. :func:`pair_margins` measures the margin on any pairs (e.g.
held-out ones) outside the trainer.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftops.core.chat import IGNORE_INDEX, encode_conversation
from ftops.training.data import TrainingError

if TYPE_CHECKING:
    from ftops.core.config import HuggingFaceBackend


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DpoProgress:
    """One DPO progress report, as logged every ``logging_steps``."""

    step: int
    max_steps: int
    loss: float
    reward_margin: float  # mean over the logged steps' pairs of β·(policy - reference log-ratio)
    reward_accuracy: float  # share of those pairs whose chosen reward is above the rejected one's
    learning_rate: float
    eta_s: float


@dataclass(frozen=True)
class PreferenceResult:
    """What a DPO run produced and how it went."""

    output_dir: Path  # adapter (lora) or full model (full), with the tokenizer
    method: str
    pairs: int
    steps: int
    seconds: float
    progress: list[DpoProgress] = field(default_factory=list)
    first_loss: float = math.nan
    final_loss: float = math.nan
    reward_margin: float = math.nan  # the last logged report's
    reward_accuracy: float = math.nan


def preference_dataset(pairs: Sequence[Mapping[str, Any]]) -> Any:
    """Pairs in TRL's conversational preference format (prompt turns, chosen and rejected assistant turns).

    Raises:
        TrainingError: A pair lacks its prompt turns, its chosen or its rejected answer.
    """
    import datasets

    datasets.disable_progress_bars()
    rows = []
    for i, pair in enumerate(pairs):
        messages, chosen, rejected = pair.get("messages"), pair.get("chosen"), pair.get("rejected")
        if not messages or not isinstance(chosen, str) or not isinstance(rejected, str) or chosen == rejected:
            raise TrainingError(f"preference pair {i} needs prompt turns and two different answers")
        rows.append({"prompt": [{"role": m["role"], "content": m["content"]} for m in messages],
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}]})  # fmt: skip
    return datasets.Dataset.from_list(rows)


def _progress_callback(started: float, reports: list[DpoProgress],
                       on_progress: Callable[[DpoProgress], None] | None) -> Any:  # fmt: skip
    """Log each DPO report as a progress line; fail at the first non-finite loss."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if not logs or "loss" not in logs:
                return
            step, total = state.global_step, state.max_steps
            if not math.isfinite(float(logs["loss"])):
                raise TrainingError(f"DPO loss is {logs['loss']} at step {step}/{total}; training diverged")
            elapsed = time.monotonic() - started
            report = DpoProgress(
                step=step, max_steps=total, loss=float(logs["loss"]),
                reward_margin=float(logs.get("rewards/margins", math.nan)),
                reward_accuracy=float(logs.get("rewards/accuracies", math.nan)),
                learning_rate=float(logs.get("learning_rate", math.nan)),
                eta_s=elapsed / max(step, 1) * (total - step),
            )  # fmt: skip
            reports.append(report)
            logger.info("dpo step %d/%d loss %.4f reward margin %.3f accuracy %.2f lr %.2e ETA %.0fs", report.step,
                        report.max_steps, report.loss, report.reward_margin, report.reward_accuracy,
                        report.learning_rate, report.eta_s)  # fmt: skip
            if on_progress is not None:
                on_progress(report)

    return _Progress()


def _policy_and_reference(base_model: str, start_from: Path | None, params: HuggingFaceBackend) -> tuple[Any, Any, Any]:
    """(policy, reference model or None, LoRA config or None) for the method and the starting point."""
    from transformers import AutoModelForCausalLM

    from ftops.training.hf import lora_config

    if params.method == "full":
        policy = AutoModelForCausalLM.from_pretrained(str(start_from or base_model))
        reference = copy.deepcopy(policy).eval()  # frozen: the trainer never steps it
        reference.requires_grad_(False)
        return policy, reference, None
    base = AutoModelForCausalLM.from_pretrained(base_model)
    if start_from is None:  # TRL wraps it; reference = the adapter disabled, i.e. the base model
        return base, None, lora_config(base, params)
    from peft import PeftModel

    # TRL copies this adapter as a frozen "ref" adapter: the reference is the SFT model.
    return PeftModel.from_pretrained(base, str(start_from), is_trainable=True), None, None


def train_preference(
    base_model: str,
    pairs: Sequence[Mapping[str, Any]],
    out_dir: Path,
    params: HuggingFaceBackend,
    *,
    start_from: Path | None = None,
    on_progress: Callable[[DpoProgress], None] | None = None,
) -> PreferenceResult:
    """Train with DPO on preference pairs and save the adapter (or full model) with the tokenizer.

    Args:
        base_model: A resolved local path or hub id of a causal LM with a chat template.
        pairs: Preference pairs (see the module docstring).
        out_dir: Where the weights and tokenizer go: an adapter on ``base_model`` (lora) or a full model.
        params: The backend's settings: ``method``, ``max_seq_len``, ``seed``, ``precision`` and the ``dpo``
            section (beta, epochs, max_steps, learning_rate, batch_size).
        start_from: What SFT saved (an adapter for lora, a full model for full) to start from and use as the
            reference; ``None``: start from ``base_model``.
        on_progress: Called with every progress report (e.g. to log MLflow metrics).

    Returns:
        The run's :class:`PreferenceResult`.

    Raises:
        TrainingError: Too few or malformed pairs, or the loss became NaN/inf.
    """
    import torch
    from transformers import AutoTokenizer, PrinterCallback, set_seed
    from trl import DPOConfig, DPOTrainer

    from ftops.training.hf import choose_precision

    dpo = params.dpo
    if len(pairs) < dpo.min_pairs:
        raise TrainingError(f"{len(pairs)} preference pairs; DPO needs at least {dpo.min_pairs} (training.backend.dpo.min_pairs)")
    set_seed(params.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(start_from) if params.method == "full" and start_from else base_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise TrainingError(f"tokenizer of {base_model} has no chat template")
    dataset = preference_dataset(pairs)
    policy, reference, peft_config = _policy_and_reference(base_model, start_from, params)
    precision = choose_precision(params.precision)
    steps_per_epoch = math.ceil(len(dataset) / dpo.batch_size)
    max_steps = min(dpo.max_steps or steps_per_epoch * dpo.epochs, steps_per_epoch * dpo.epochs)
    logger.info("DPO (%s, reference: %s) on %s from %s: %d pairs, %d steps, batch %d, beta %g, lr %.1e, %s",
                params.method, "frozen copy" if reference is not None else "the adapter disabled" if peft_config
                else "frozen copy of the SFT adapter", base_model, start_from or "the base model", len(dataset),
                max_steps, dpo.batch_size, dpo.beta, dpo.learning_rate, precision)  # fmt: skip
    reports: list[DpoProgress] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ftops-dpo-") as scratch:
        args = DPOConfig(
            output_dir=scratch,
            beta=dpo.beta,
            num_train_epochs=dpo.epochs,
            max_steps=max_steps,
            per_device_train_batch_size=dpo.batch_size,
            learning_rate=dpo.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=max(1, max_steps // 20),
            max_length=params.max_seq_len,
            logging_steps=max(1, max_steps // 20),
            logging_first_step=True,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            gradient_checkpointing=False,  # TRL's default; a small model trains faster without it
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            bf16=precision == "bf16",
            use_cpu=not torch.cuda.is_available(),
            seed=params.seed,
            data_seed=params.seed,
        )
        trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[_progress_callback(started, reports, on_progress)])  # fmt: skip
        trainer.remove_callback(PrinterCallback)
        output = trainer.train()
    model: Any = trainer.model
    if "ref" in getattr(model, "peft_config", {}):  # the reference copy of an SFT adapter: not part of the result
        model.delete_adapter("ref")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(out_dir)
    seconds = time.monotonic() - started
    last = reports[-1] if reports else None
    result = PreferenceResult(
        output_dir=out_dir, method=params.method, pairs=len(dataset), steps=int(output.global_step),
        seconds=round(seconds, 2), progress=reports, first_loss=reports[0].loss if reports else math.nan,
        final_loss=last.loss if last else math.nan, reward_margin=last.reward_margin if last else math.nan,
        reward_accuracy=last.reward_accuracy if last else math.nan,
    )  # fmt: skip
    logger.info("DPO: %d steps in %.1fs; loss %.4f -> %.4f; reward margin %.3f, accuracy %.2f; saved to %s",
                result.steps, seconds, result.first_loss, result.final_loss, result.reward_margin,
                result.reward_accuracy, out_dir)  # fmt: skip
    return result


def pair_logps(model: Any, tokenizer: Any, pairs: Sequence[Mapping[str, Any]], max_seq_len: int = 256) -> list[tuple[float, float]]:
    """(log p(chosen | prompt), log p(rejected | prompt)) of each pair under ``model``, summed over the answer's
    tokens (with the chat template's end of turn), as training encodes a reply."""
    import torch

    out = []
    model.eval()
    with torch.no_grad():
        for pair in pairs:
            logps = []
            for answer in (pair["chosen"], pair["rejected"]):
                encoded = encode_conversation(tokenizer, [*pair["messages"], {"role": "assistant", "content": answer}],
                                              max_seq_len)  # fmt: skip
                ids = torch.tensor([encoded.input_ids])
                labels = torch.tensor(encoded.labels[1:])
                logits = model(input_ids=ids).logits[0, :-1].float()
                token_logps = torch.log_softmax(logits, -1).gather(1, labels.clamp(min=0)[:, None])[:, 0]
                logps.append(float(token_logps[labels != IGNORE_INDEX].sum()))
            out.append((logps[0], logps[1]))
    return out


def pair_margins(policy: Any, reference: Any, tokenizer: Any, pairs: Sequence[Mapping[str, Any]],
                 max_seq_len: int = 256) -> list[float]:  # fmt: skip
    """Each pair's implicit DPO reward margin (without β): the policy's log-ratio chosen/rejected minus the
    reference's. Positive: the policy prefers the chosen answer more than the reference does."""
    policy_logps = pair_logps(policy, tokenizer, pairs, max_seq_len)
    reference_logps = pair_logps(reference, tokenizer, pairs, max_seq_len)
    return [(pc - pr) - (rc - rr) for (pc, pr), (rc, rr) in zip(policy_logps, reference_logps, strict=True)]


def resolve_objective(objective: str, pairs: int, min_pairs: int, version: str) -> str:
    """The objective a run trains with, given how many preference pairs its dataset version holds.

    ``sft_then_dpo`` without enough pairs falls back to ``sft`` (logged); ``dpo`` without them fails.

    Raises:
        TrainingError: ``dpo`` with fewer than ``min_pairs`` pairs.
    """
    if objective == "sft" or pairs >= min_pairs:
        return objective
    if objective == "dpo":
        raise TrainingError(f"objective dpo needs preference pairs, and {version} has {pairs} (dpo.min_pairs is "
                            f"{min_pairs}): train with objective sft or sft_then_dpo, or on a version with pairs")  # fmt: skip
    logger.warning("%s has %d preference pairs (dpo.min_pairs %d): objective sft_then_dpo trains SFT only", version,
                   pairs, min_pairs)  # fmt: skip
    return "sft"
