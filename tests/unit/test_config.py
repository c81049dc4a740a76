from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from ftops.core.config import (
    FtopsConfig,
    HuggingFaceBackend,
    JudgeConfig,
    OpenAIBackend,
    apply_overrides,
    load_config,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "include" / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    assert isinstance(load_config(path), FtopsConfig)


def test_design_defaults() -> None:
    cfg = FtopsConfig()
    assert cfg.curation.min_examples == 100
    assert cfg.curation.quality_threshold == 4.0
    assert (cfg.curation.min_response_chars, cfg.curation.max_response_chars) == (50, 5000)
    assert cfg.curation.max_latency_ms == 10_000
    assert cfg.curation.diversity_threshold == 0.9
    assert cfg.curation.target_size == 500
    assert cfg.curation.test_split == 0.2
    assert cfg.gate.min_accuracy_gain == 0.05
    assert cfg.gate.max_latency_increase_ms == 200
    assert cfg.canary.traffic_percent == 10 and cfg.canary.duration_hours == 24
    assert cfg.canary.max_error_rate == 0.05 and cfg.canary.max_latency_p95_ms == 2000
    assert cfg.governor.min_new_examples == 100 and cfg.governor.error_pattern_min == 10
    assert cfg.governor.plateau_days == 30
    openai = OpenAIBackend()
    assert (openai.n_epochs, openai.batch_size, openai.learning_rate_multiplier) == (3, 4, 0.1)
    assert HuggingFaceBackend().epochs == 3


def test_every_field_is_described() -> None:
    def walk(model: type) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"

    for model in (FtopsConfig, HuggingFaceBackend, OpenAIBackend, JudgeConfig, *(type(getattr(FtopsConfig(), n)) for n
                  in ("curation", "training", "gate", "canary", "governor", "storage", "evaluation"))):  # fmt: skip
        walk(model)


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"curation": {"target_sise": 10}}))
    with pytest.raises(ValidationError, match="target_sise"):
        load_config(path)


def test_overrides_apply_for_one_run_and_are_validated() -> None:
    base = FtopsConfig()
    changed = apply_overrides(base, {"curation.target_size": 42, "curation.quality_threshold": None})
    assert changed.curation.target_size == 42
    assert changed.curation.quality_threshold == base.curation.quality_threshold
    assert base.curation.target_size == 500
    with pytest.raises(ValidationError):
        apply_overrides(base, {"curation.test_split": 1.5})


def test_switching_backend_starts_from_its_own_defaults() -> None:
    cfg = apply_overrides(FtopsConfig(), {"training.backend.base_model": "gpt-x", "training.backend.kind": "openai"})
    assert isinstance(cfg.training.backend, OpenAIBackend)
    assert cfg.training.backend.base_model == "gpt-x"
    assert cfg.training.backend.n_epochs == 3


def test_trigger_form_training_fields_map_onto_the_chosen_backend() -> None:
    from ftops.core.config import FtopsConfig, apply_overrides
    from ftops.training.params import training_overrides

    base = FtopsConfig()
    api = apply_overrides(base, training_overrides(base, "openai", {"epochs": 5, "batch_size": 8}))
    assert api.training.backend.kind == "openai"
    assert (api.training.backend.n_epochs, api.training.backend.batch_size) == (5, 8)
    local = apply_overrides(base, training_overrides(base, None, {"epochs": 4, "lora_r": 8, "base_model": "x"}))
    assert (local.training.backend.epochs, local.training.backend.lora_r) == (4, 8)
    with pytest.raises(ValueError, match="lora_r=8 does not apply to the openai backend"):
        training_overrides(base, "openai", {"lora_r": 8})
    api = apply_overrides(base, training_overrides(base, "openai", {"learning_rate_multiplier": 0.5}))
    assert api.training.backend.learning_rate_multiplier == 0.5
    with pytest.raises(ValueError, match="learning_rate_multiplier=0.5 does not apply to the huggingface backend"):
        training_overrides(base, None, {"learning_rate_multiplier": 0.5})
    full = apply_overrides(base, training_overrides(base, "huggingface", {"method": "full"}))
    assert full.training.backend.method == "full"
    with pytest.raises(ValueError, match="method='full' does not apply to the openai backend"):
        training_overrides(base, "openai", {"method": "full"})
    with pytest.raises(ValueError, match="lora_r=8 does not apply to method 'full'"):
        training_overrides(base, None, {"method": "full", "lora_r": 8})
    configured_full = apply_overrides(base, {"training.backend.method": "full"})  # as the shipped config
    with pytest.raises(ValueError, match="lora_r=8 does not apply to method 'full'"):
        training_overrides(configured_full, None, {"lora_r": 8})
    assert training_overrides(configured_full, None, {"method": "lora", "lora_r": 8})["training.backend.lora_r"] == 8


def test_evaluation_metrics_default_to_exact_and_name_valid_task_types() -> None:
    cfg = FtopsConfig.model_validate({"evaluation": {"metrics": {"support_reply": "judge"}}})
    assert cfg.evaluation.metric("support_reply") == "judge" and cfg.evaluation.metric("sentiment") == "exact"
    assert load_config().evaluation.judge.min_kappa == 0.6  # the shipped file
    for bad in ({"support_reply": "bleu"}, {"../x": "judge"}):
        with pytest.raises(ValidationError):
            FtopsConfig.model_validate({"evaluation": {"metrics": bad}})
    overridden = apply_overrides(cfg, {"evaluation.judge.max_calls": 10})
    assert overridden.evaluation.judge.max_calls == 10


def test_training_threads_limit_torch_in_the_task_process() -> None:
    import torch

    from ftops.pipeline.finetune import use_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        use_threads(FtopsConfig.model_validate({"training": {"backend": {"kind": "huggingface", "threads": 1}}}))
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        use_threads(FtopsConfig())  # empty: torch keeps its own setting
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

