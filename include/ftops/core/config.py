"""The one FT-Ops configuration: a YAML file validated by one pydantic model.

Every field carries a description; the defaults are the original design's (DESIGN.md). A manual trigger's
params override fields for one run through :func:`apply_overrides`; the first task of each DAG resolves the
merged config once and later tasks use that snapshot, so a retry sees the same settings.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ftops.core.evaluation_config import EvaluationConfig, JudgeConfig  # noqa: F401 - re-exported
from ftops.core.serving_config import ServingConfig
from ftops.core.stats import required_calls
from ftops.core.teacher_config import TeacherConfig
from ftops.core.training_config import (  # noqa: F401 - re-exported
    LOCAL_BASE_MODEL,
    Backend,
    DpoConfig,
    HuggingFaceBackend,
    OpenAIBackend,
    TrainingConfig,
)

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "include" / "config" / "ftops.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CurationConfig(_Strict):
    min_examples: int = Field(100, ge=1, description="Fewest accepted examples a dataset version may hold.")
    quality_threshold: float = Field(4.0, ge=1, le=5, description="Lowest user rating (1-5) a kept example may have.")
    min_response_chars: int = Field(50, ge=0, description="Shortest response kept, in characters.")
    max_response_chars: int = Field(5000, ge=1, description="Longest response kept, in characters.")
    max_prompt_chars: int = Field(20000, ge=1, description="Longest prompt kept; longer ones are quarantined.")
    max_latency_ms: int = Field(10_000, ge=1, description="Slowest call kept, in milliseconds.")
    error_markers: tuple[str, ...] = Field(
        ("error:", "exception", "traceback", "i cannot", "i'm sorry", "as an ai"),
        description="Case-insensitive substrings that mark a response as error text.",
    )
    diversity_threshold: float = Field(
        0.9, gt=0, le=1, description="Cosine similarity at or above which a prompt counts as a near duplicate."
    )
    target_size: int = Field(500, ge=1, description="Most examples selected into one dataset version.")
    leakage_threshold: float = Field(0.9, gt=0, le=1, description="Cosine at or above which a prompt leaks across the splits of any two versions.")
    target_sources: list[Literal["correction", "teacher"]] = Field(
        ["correction", "teacher"],
        description="Better answers that may replace a failed or low-rated served answer as a training target (a "
        "user's or review tool's correction; the teacher's checked answer); served answers of good rows always "
        "are. [] trains on served answers only (the control of a learning-loop run); candidates of earlier runs whose "
        "target came from a source left out are left out too.",
    )
    evalset_threshold: float = Field(0.95, gt=0, le=1, description="Cosine at or above which a training example asks an eval-set question (left out of training).")
    ann_min_pool: int = Field(200_000, ge=1, description="Pool and target both above this: the near-duplicate search uses the IVF index.")
    ann_nlist: int = Field(1024, ge=1, description="Buckets (k-means centroids) of the approximate index.")
    ann_nprobe: int = Field(16, ge=1, description="Buckets of the approximate index searched per query.")
    test_split: float = Field(0.2, gt=0, lt=1, description="Share of examples assigned (by prompt hash) to the test split.")
    embedding_model: str = Field(
        "all-MiniLM-L6-v2",
        description="Sentence-embedding model for diversity selection: the packaged all-MiniLM-L6-v2, a path or a hub id.",
    )
    embedding_batch_size: int = Field(64, ge=1, description="Prompts embedded per batch.")
    max_malformed_share: float = Field(
        0.2, ge=0, le=1, description="Largest share of a raw batch that may be quarantined as malformed before the batch fails."
    )
    max_user_share: float = Field(
        0.1, gt=0, le=1, description="Largest share of a dataset version one user_id may contribute (feedback gaming)."
    )
    burst_top_ratings: int = Field(
        20, ge=2, description="Top ratings (5) from one user within burst_window_minutes that count as a rating burst."
    )
    burst_window_minutes: float = Field(10, gt=0, description="Window in which a burst of top ratings is counted.")
    future_tolerance_minutes: float = Field(
        5, ge=0, description="Clock skew allowed on log timestamps; later ones are quarantined as in the future."
    )

    @model_validator(mode="after")
    def _lengths_ordered(self) -> CurationConfig:
        if self.min_response_chars > self.max_response_chars:
            raise ValueError("min_response_chars must not exceed max_response_chars")
        return self


class GateConfig(_Strict):
    min_accuracy_gain: float = Field(0.05, description="Accuracy the candidate must add over the baseline.")
    min_accuracy: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Accuracy the candidate must reach on the test split, whatever the baseline. Guards the first "
        "model of a task type, which is compared only with the untuned base model (0 = no floor).",
    )
    max_perplexity_increase: float = Field(0.0, ge=0, description="Allowed perplexity rise over the baseline (0 = none).")
    max_latency_increase_ms: float = Field(200, ge=0, description="Allowed p50 latency rise over the baseline, ms.")
    min_test_examples: int = Field(20, ge=1, description="Fewest test examples a decision may rest on.")
    min_lower_bound_gain: float = Field(
        0.0, description="The lower confidence bound of the accuracy gain (paired bootstrap) must exceed this."
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="Two-sided level of the accuracy-gain confidence interval.")
    bootstrap_resamples: int = Field(2000, ge=100, description="Paired bootstrap resamples for that interval.")
    require_slice_improvement: bool = Field(False, description="A fine-tune started by an error pattern ships only "
                                            "if it fixes more of that failure cluster than the champion.")  # fmt: skip
    log_examples: int = Field(
        0,
        ge=0,
        le=20,
        description="Test answers printed in the evaluation's task log, each scrubbed and cut to 60 characters. "
        "0 (the default) prints counts only: task logs are kept and shipped where erasure cannot reach them.",
    )
    max_cost_per_1k_tokens: float | None = Field(
        None, ge=0, description="Cost ceiling per 1 000 generated tokens for the candidate; empty = no ceiling."
    )
    compute_cost_per_hour: float = Field(
        0.0,
        ge=0,
        description="Price of one hour of the machine that runs a local (Hugging Face) model, in the ceiling's "
        "currency; turns measured generation time into cost per 1 000 tokens. 0 = not priced (cost 0).",
    )
    replace_margin: float = Field(0.02, ge=0, le=1, description="Replacing an upstream champion: how much worse on "
                                  "the yardstick the candidate may be (the lower confidence bound of its gain, or of "
                                  "the judge's net win, must be above -replace_margin).")  # fmt: skip
    min_saving: float = Field(0.5, ge=0, le=1, description="Replacing an upstream champion: the candidate's cost per "
                              "1 000 calls must be at least this share below the champion's (needs "
                              "compute_cost_per_hour).")  # fmt: skip
    max_latency_p95_ms: float = Field(2000, gt=0, description="Replacing an upstream champion: the candidate's p95 "
                                      "latency (single requests), ms, must be under this.")  # fmt: skip


# 80 % power for "not worse by min_effect" at the defaults: ceil((z(1 - 0.05/2) + z(0.8))² · 2 · 0.9 · 0.1 / 0.02²)
# = ceil((1.960 + 0.842)² · 0.18 / 0.0004) = ceil(7.849 · 450) = 3 532 canary calls (README: "How many calls").
DEFAULT_MIN_REQUESTS = required_calls(0.9, 0.02, 0.05 / 2, 0.8)


class CanaryConfig(_Strict):
    traffic_percent: int = Field(
        10, ge=1, le=100,
        description="Share of traffic a new canary serves: the first step of ramp_percent. A config that sets only "
        "this one ramps in a single step (the canary keeps this share until it is promoted).",
    )  # fmt: skip
    ramp_percent: tuple[Annotated[int, Field(ge=1, le=100)], ...] = Field(
        (10, 50, 100), min_length=1,
        description="Traffic shares (percent, strictly ascending, 1-100) the canary steps through. Each step lasts "
        "duration_hours / len(ramp_percent) and needs min_requests calls without harm; after the last, promote.",
    )  # fmt: skip
    duration_hours: float = Field(
        24, gt=0, description="How long a canary is observed (all ramp steps together) before it is promoted."
    )
    max_error_rate: float = Field(0.05, ge=0, le=1, description="Canary error rate at or above which it is rolled "
                                  "back at once.")
    max_latency_p95_ms: float = Field(2000, gt=0, description="Canary p95 latency (ms) at or above which it is "
                                      "rolled back, unless the champion's p95 over the same window is too (hold).")
    max_latency_ratio: float = Field(1.5, ge=1, description="Canary p95 above this multiple of the champion's p95 (same "
                                     "window) and above it + latency_margin_ms: rolled back at once.")
    latency_margin_ms: float = Field(200, ge=0, description="Slack (ms) over the champion's p95 a canary's p95 always "
                                     "has (a fast champion's p95 × 1.5 is only a few ms more).")
    min_requests: int = Field(DEFAULT_MIN_REQUESTS, ge=1, description="Canary calls a ramp or promotion needs (window "
                              "and each step). Not set: required_calls(expected_success_rate, min_effect, "
                              "significance / 2, power), 80 % power to show 'not worse' for an equal canary.")
    min_rollback_requests: int = Field(20, ge=1, description="Canary (and champion) calls before anything is judged; "
                                       "from here a canary over a limit or worse is rolled back (≤ min_requests).")
    power: float = Field(0.8, ge=0.5, lt=1, description="Chance an equal canary is shown 'not worse' at min_requests.")
    expected_success_rate: float = Field(0.9, gt=0, lt=1, description="The champion's typical task success: only "
                                         "sizes min_requests when it is not set.")
    significance: float = Field(
        0.05, gt=0, lt=0.5, description="Chance per review of rolling back a canary that is not worse (family-wise: "
        "split evenly, Bonferroni, over the comparisons made).",
    )  # fmt: skip
    min_effect: float = Field(
        0.02, ge=0, le=1, description="Smallest worsening of error rate or task success (absolute: 0.02 = 2 points) "
        "that may roll a canary back, however significant.",
    )  # fmt: skip
    min_rating_drop: float = Field(
        0.2, ge=0, le=4, description="Smallest drop in mean user rating (stars, 1-5) that may roll a canary back."
    )
    min_rated: int = Field(
        20, ge=2, description="Fewest rated calls canary and champion each need before their ratings are compared; "
        "with fewer, ratings are not compared (they still count in task success).",
    )  # fmt: skip
    success_min_rating: int = Field(
        4, ge=1, le=5, description="Lowest rating at which a successful, rated call counts as a task success."
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_first_step(cls, data: Any) -> Any:
        # Configs written before ramps set only traffic_percent: they keep their one-step behaviour.
        if isinstance(data, dict):
            if "min_requests" not in data:  # sized from this config's own power settings
                f = {k: float(data.get(k) or cls.model_fields[k].default) for k in
                     ("expected_success_rate", "min_effect", "significance", "power")}  # fmt: skip
                with contextlib.suppress(ValueError):  # out of range: the field validators say which one
                    data = {**data, "min_requests": required_calls(f["expected_success_rate"], f["min_effect"],
                                                                   f["significance"] / 2, f["power"])}  # fmt: skip
            if "ramp_percent" not in data and data.get("traffic_percent") is not None:
                data = {**data, "ramp_percent": [data["traffic_percent"]]}
            elif "traffic_percent" not in data and data.get("ramp_percent"):
                data = {**data, "traffic_percent": list(data["ramp_percent"])[0]}
        return data

    @model_validator(mode="after")
    def _ramp_ascending(self) -> CanaryConfig:
        steps = self.ramp_percent
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"ramp_percent must be strictly ascending, got {list(steps)}")
        if steps[0] != self.traffic_percent:
            raise ValueError(f"traffic_percent ({self.traffic_percent}) is the first ramp step ({steps[0]}): "
                             "set one of the two, or both alike")  # fmt: skip
        return self


class GovernorConfig(_Strict):
    """Policies (which may start training) and guards (what holds it back); dags/ftops_governor.py explains each."""

    policies: list[Literal["erasure", "error_pattern", "plateau", "new_data"]] = Field(
        ["erasure", "error_pattern", "plateau", "new_data"], description="Policies that may start training on "
        "their own (`force`, a person asking, always may).",
    )
    min_new_examples: int = Field(100, ge=1, description="new_data: examples of the newest version the champion's lacks.")
    error_pattern_min: int = Field(10, ge=2, description="error_pattern: similar failures that make a pattern.")
    error_pattern_similarity: float = Field(0.8, gt=0, le=1, description="error_pattern: prompt cosine of 'similar'.")
    error_pattern_max_failures: int = Field(2000, ge=1, description="error_pattern: newest failures clustered.")
    plateau_days: int = Field(30, ge=1, description="plateau: days without improvement that count as a plateau.")
    plateau_min_improvement: float = Field(0.01, ge=0, description="plateau: task-success rise that counts.")
    plateau_min_requests: int = Field(50, ge=1, description="plateau: champion calls needed in each window.")
    cooldown_hours: float = Field(24, ge=0, description="Guard: hours between training decisions (erasure exempt).")
    daily_api_budget_usd: float = Field(100.0, ge=0, description="Guard: estimated API fine-tuning spend per day.")
    max_failed_attempts: int = Field(3, ge=1, description="Guard: failed fine-tunes of a version before giving up.")


class StorageConfig(_Strict):
    dataset_repo: str | None = Field(
        None, description="Folder of the git + DVC dataset registry; empty: FTOPS_HOME/datasets."
    )
    dvc_remote: str | None = Field(
        None, description="DVC remote URL (s3://, gs://, azure://, a folder); empty: FTOPS_HOME/dvc-remote."
    )
    dataset_remote: str | None = Field(None, description="Git remote that dataset versions are pushed to and read from by every worker (URL or bare-repository folder, made on first use); empty: datasets-remote.git beside dataset_repo.")
    embedding_cache: str | None = Field(
        None, description="SQLite file caching prompt embeddings by content hash; empty: FTOPS_HOME/embeddings.db."
    )
    checkpoints: str | None = Field(
        None,
        description="Folder for training checkpoints, shared by every worker that may retry a training task "
        "(e.g. a network mount); empty: FTOPS_HOME/checkpoints.",
    )

    def checkpoint_root(self) -> Path:
        """Where training checkpoints go, with the FTOPS_HOME default filled in."""
        return Path(self.checkpoints or ftops_home() / "checkpoints")

    def resolved(self) -> tuple[Path, str, Path]:
        """(dataset repo, DVC remote, embedding cache) with FTOPS_HOME defaults filled in."""
        home = ftops_home()
        return (
            Path(self.dataset_repo or home / "datasets"),
            self.dvc_remote or str(home / "dvc-remote"),
            Path(self.embedding_cache or home / "embeddings.db"),
        )


class FtopsConfig(_Strict):
    task_types: tuple[str, ...] = Field(
        (), description="Task types to curate and train; empty means every task type found in the logs."
    )
    interactions_table: str = Field("interactions", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Log table name.")
    warehouse_conn_id: str = Field("ftops_warehouse", description="Airflow connection of the SQL warehouse.")
    curation: CurationConfig = Field(default_factory=CurationConfig, description="Nightly curation.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Fine-tuning.")
    gate: GateConfig = Field(default_factory=GateConfig, description="Deployment gate.")
    canary: CanaryConfig = Field(default_factory=CanaryConfig, description="Canary roll-out.")
    governor: GovernorConfig = Field(default_factory=GovernorConfig, description="When to train.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Where datasets and caches live.")
    serving: ServingConfig = Field(default_factory=ServingConfig, description="The `ftops serve` gateway.")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="How answers are scored.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="Relabelling failures with a teacher.")


def load_config(path: str | Path | None = None) -> FtopsConfig:
    """Load and validate the YAML config.

    Args:
        path: The file; default ``$FTOPS_CONFIG`` or ``include/config/ftops.yaml``.

    Returns:
        The validated config.

    Raises:
        FileNotFoundError: The file does not exist.
        pydantic.ValidationError: A field is unknown or out of range.
    """
    path = Path(path or os.environ.get("FTOPS_CONFIG") or DEFAULT_CONFIG_PATH)
    data = yaml.safe_load(path.read_text()) or {}
    return FtopsConfig.model_validate(data)


def apply_overrides(config: FtopsConfig, overrides: dict[str, Any]) -> FtopsConfig:
    """Return ``config`` with dotted-key overrides applied and re-validated.

    ``None`` values mean "keep the configured value", which is how an empty trigger-form field arrives.

    Args:
        config: The base config.
        overrides: e.g. ``{"curation.target_size": 200, "training.backend.kind": "openai"}``.

    Returns:
        A new validated config.
    """
    data = config.model_dump()
    # a backend switch first, so the new backend's own overrides land on its defaults
    ordered = sorted(overrides.items(), key=lambda kv: kv[0] != "training.backend.kind")
    for dotted, value in ordered:
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})  # e.g. training.backend.dpo after a backend switch cleared it
        if dotted == "training.backend.kind" and value != node.get("kind"):
            node.clear()  # a different backend starts from its own defaults
        node[leaf] = value
    return FtopsConfig.model_validate(data)


def ftops_home() -> Path:
    """Folder of the embedded defaults: ``$FTOPS_HOME`` or ``.ftops/`` in the project."""
    return Path(os.environ.get("FTOPS_HOME") or PROJECT_ROOT / ".ftops").resolve()


def resolve_base_model(name: str) -> str:
    """Map ``local:<name>`` to the model built under ``FTOPS_HOME/models``; other names pass through."""
    if name.startswith("local:"):
        return str(ftops_home() / "models" / name.removeprefix("local:"))
    return name


def check_base_model(name: str) -> str:
    """The resolved base model, or a clear error when a local one is not built or a path does not exist."""
    path = resolve_base_model(name)
    if name.startswith("local:") and not Path(path).is_dir():
        raise FileNotFoundError(f"base model {name!r} is not built at {path}: run `ftops build-base-model`")
    if path.startswith(("/", ".")) and not Path(path).is_dir():
        raise FileNotFoundError(f"base model path {path} does not exist")
    return path
