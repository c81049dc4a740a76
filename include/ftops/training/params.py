"""``ftops_finetune``'s trigger form mapped onto the chosen training backend's config fields."""

from __future__ import annotations

from typing import Any

from ftops.core.config import FtopsConfig, HuggingFaceBackend

# Trigger-form fields of ftops_finetune -> the backend field each sets, per backend (None: does not apply).
_TRAINING_PARAMS: dict[str, dict[str, str | None]] = {
    "huggingface": {"base_model": "base_model", "method": "method", "epochs": "epochs",
                    "learning_rate": "learning_rate", "batch_size": "batch_size", "lora_r": "lora_r",
                    "lora_alpha": "lora_alpha", "max_seq_len": "max_seq_len", "precision": "precision",
                    "objective": "objective", "dpo_beta": "dpo.beta", "learning_rate_multiplier": None},
    "openai": {"base_model": "base_model", "method": None, "epochs": "n_epochs", "learning_rate": None,
               "batch_size": "batch_size", "lora_r": None, "lora_alpha": None, "max_seq_len": None,
               "precision": None, "objective": None, "dpo_beta": None,
               "learning_rate_multiplier": "learning_rate_multiplier"},
}  # fmt: skip


def training_overrides(config: FtopsConfig, backend: str | None, params: dict[str, Any]) -> dict[str, Any]:
    """Dotted config overrides from ``ftops_finetune``'s trigger form, mapped onto the chosen backend.

    ``epochs`` sets ``n_epochs`` on the OpenAI backend; a form field that the backend has no use for is an
    error rather than silently ignored.

    Raises:
        ValueError: A field was given that the backend does not use (e.g. ``lora_r`` with ``openai``).
    """
    kind = backend or config.training.backend.kind
    configured = config.training.backend
    method = params.get("method") or (configured.method if isinstance(configured, HuggingFaceBackend) else "lora")
    if kind == "huggingface" and method == "full":
        for name in ("lora_r", "lora_alpha"):
            if params.get(name) is not None:
                raise ValueError(f"{name}={params[name]!r} does not apply to method 'full'; leave it empty")
    overrides: dict[str, Any] = {"training.backend.kind": backend}
    for name, field in _TRAINING_PARAMS[kind].items():
        value = params.get(name)
        if value is None:
            continue
        if field is None:
            raise ValueError(f"{name}={value!r} does not apply to the {kind} backend; leave it empty")
        overrides[f"training.backend.{field}"] = value
    return overrides
