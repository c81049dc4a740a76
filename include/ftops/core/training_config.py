"""The ``training`` section of the FT-Ops config (kept apart from :mod:`ftops.core.config` for its size).

:mod:`ftops.core.config` re-exports every name here; import them from there.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LOCAL_BASE_MODEL", "Backend", "DpoConfig", "HuggingFaceBackend", "OpenAIBackend", "TrainingConfig"]

LOCAL_BASE_MODEL = "local:tiny-gpt2"
Source = Literal["served", "correction", "teacher"]  # where a training target came from (DESIGN.md)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DpoConfig(_Strict):
    """``training.backend.dpo``: preference training (TRL's DPOTrainer) on a version's preference pairs."""

    beta: float = Field(0.1, gt=0, le=10, description="DPO temperature: how far the policy may move from the reference (higher: stays closer).")
    epochs: int = Field(3, ge=1, le=100, description="Passes over the preference pairs.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps, whatever the epochs; empty: every epoch.")
    learning_rate: float = Field(5e-4, gt=0, le=1, description="Peak AdamW learning rate of the DPO phase (far below SFT's: DPO only nudges).")
    batch_size: int = Field(8, ge=1, le=1024, description="Pairs per optimiser step.")
    min_pairs: int = Field(1, ge=1, description="Fewest preference pairs DPO trains on; fewer: `dpo` fails, `sft_then_dpo` keeps the SFT model.")


class HuggingFaceBackend(_Strict):
    kind: Literal["huggingface"] = Field("huggingface", description="Train locally with Transformers (+ PEFT LoRA).")
    method: Literal["lora", "full"] = Field(
        "lora", description="lora: train a PEFT LoRA adapter; full: train every weight of the base model."
    )
    base_model: str = Field(
        LOCAL_BASE_MODEL,
        description="A local path, a hub id, or 'local:tiny-gpt2' for the model `ftops build-base-model` builds.",
    )
    epochs: int = Field(3, ge=1, le=100, description="Passes over the training split.")
    learning_rate: float = Field(2e-3, gt=0, le=1, description="Peak AdamW learning rate of the trained weights.")
    batch_size: int = Field(16, ge=1, le=1024, description="Examples per optimiser step.")
    lora_r: int = Field(16, ge=1, le=256, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (alpha / r scales the update).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    lora_target_modules: tuple[str, ...] | None = Field(
        None,
        description="Names (last part) of the layers LoRA adapts, e.g. [q_proj, v_proj]; empty: GPT-2's "
        "c_attn, c_proj and c_fc where the model has them, else every linear layer.",
    )
    max_seq_len: int = Field(256, ge=16, description="Tokens per example after the chat template; longer ones are cut.")
    seed: int = Field(0, description="Seed for data order and weight initialisation.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, fp32 otherwise."
    )
    padding_free: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Concatenate a batch's examples into one row, no padding. on: whenever the model supports "
        "it (probed at start); auto: only with flash attention, whose kernels skip the other examples (with "
        "sdpa or eager attention one row of n tokens costs n² attention); off: pad each batch to its longest.",
    )
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="Save a resumable checkpoint every this many steps; empty: about every 10 %."
    )
    validation_share: float = Field(0.2, ge=0, lt=1, description="Share of the train split held out to evaluate each epoch and keep the best checkpoint (by prompt hash); 0: none.")
    objective: Literal["sft", "dpo", "sft_then_dpo"] = Field(
        "sft",
        description="sft: imitate the train split's targets; dpo: prefer each preference pair's chosen answer "
        "over its rejected one, from the base model; sft_then_dpo: SFT, then DPO from the SFT model.",
    )
    dpo: DpoConfig = Field(default_factory=DpoConfig, description="DPO settings (objective dpo or sft_then_dpo).")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after this many epochs without a lower validation loss; empty: train every epoch.")
    threads: int | None = Field(
        None, ge=1, description="CPU threads torch uses in a training or evaluation task; empty: torch's default "
        "(one per core). With n slots in the ftops_training pool on one worker: cores / n."
    )


class OpenAIBackend(_Strict):
    kind: Literal["openai"] = Field("openai", description="Fine-tune through an OpenAI-compatible fine-tuning API.")
    base_model: str = Field("gpt-4o-mini-2024-07-18", description="Model id the API fine-tunes.")
    conn_id: str = Field("openai_default", description="Airflow connection: API key in password, base URL in host.")
    n_epochs: int = Field(3, ge=1, le=50, description="Epochs the API trains for.")
    batch_size: int = Field(4, ge=1, description="API batch size.")
    learning_rate_multiplier: float = Field(0.1, gt=0, le=10, description="API learning-rate multiplier.")
    validation_share: float = Field(0.2, ge=0, lt=1, description="Share of the train split uploaded as the job's validation file (by prompt hash); 0: none.")
    suffix: str | None = Field(
        None, max_length=64, description="Text the API adds to the fine-tuned model's name (ft:<base>:<org>:<suffix>:<id>)."
    )
    # Illustrative OpenAI list prices (USD per 1M trained tokens) when this was written: check the provider's
    # pricing page. A model missing here cannot be trained, so an unpriced model never runs unbudgeted.
    price_per_1m_training_tokens: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {
            "gpt-4o-mini-2024-07-18": 3.0,
            "gpt-4o-2024-08-06": 25.0,
            "gpt-4.1-2025-04-14": 25.0,
            "gpt-4.1-mini-2025-04-14": 5.0,
            "gpt-4.1-nano-2025-04-14": 1.5,
            "gpt-3.5-turbo-0125": 8.0,
        },
        description="Training price per 1M tokens by base model (USD; illustrative list prices, check them).",
    )
    max_cost_usd: float = Field(
        50, ge=0, description="Largest estimated training cost (tokens × epochs × price) a job may start with, USD."
    )
    timeout_hours: float = Field(
        24, gt=0, description="How long a job may take, counted from its creation, before it is cancelled and fails."
    )
    poll_seconds: float = Field(
        60, gt=0, description="Seconds between two looks at a running job (the triggerer polls; no worker is held)."
    )


Backend = Annotated[HuggingFaceBackend | OpenAIBackend, Field(discriminator="kind")]


class TrainingConfig(_Strict):
    backend: Backend = Field(default_factory=HuggingFaceBackend, description="Which trainer, with its own options.")
    min_train_examples: int = Field(
        20, ge=1, description="Fewest examples a training split may hold; a smaller one fails before any work."
    )
    source_weights: dict[Source, Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: {"correction": 3, "teacher": 2, "served": 1},  # type: ignore[arg-type,dict-item]
        description="SFT repeats each train row this many times by its target's source (metadata sources.train; "
        "a version without it is all served); integers, so a weight is an exact count of copies. A source left "
        "out weighs 1.",
    )
    cluster_share: float = Field(
        0.2, ge=0.0, lt=1.0,
        description="A fine-tune the governor started for an error pattern repeats the train rows of that failure "
        "cluster (corrected or relabelled prompts the governor recorded) until they are at least this share of the "
        "training rows (at most 20 copies each); 0 turns it off.",
    )  # fmt: skip
    queue: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]+$", description="Airflow queue of every ftops_finetune task (CeleryExecutor: the workers with the accelerator listen on it, `airflow celery worker --queues`); read when the DAG is parsed; empty: [operators] default_queue.")
