"""Manual rollback against a real MLflow store: guarded, resolved once, compare-and-set, and a retry after a crash
between any two writes finishes the same move (issue 19, item 5)."""

from __future__ import annotations

from typing import Any

import mlflow
import pytest

from ftops.deployment import guards, rollout
from ftops.pipeline.rollback import rollback
from ftops.registry import models as registry
from tests.serving_support import aliases, version_tags

pytestmark = pytest.mark.usefixtures("mlflow_store")  # one store per module; tests use their own task types


class Crash(RuntimeError):
    """Stands for the worker dying mid-task (a lost connection, an OOM kill)."""


def _version(task_type: str, **tags: Any) -> str:
    with mlflow.start_run(experiment_id=registry.experiment_id(task_type)) as run:
        mlflow.log_text("x", "adapter/x.txt")
    return registry.register(task_type, run.info.run_id, f"{run.info.artifact_uri}/adapter", tags)


def _served(task_type: str) -> tuple[str, str]:
    """v_good served as champion, then v_bad was promoted over it: returns (good, bad)."""
    good, bad = _version(task_type, decision="deploy"), _version(task_type, decision="deploy")
    assert rollout.deploy(task_type, good, 10) == "champion"
    assert rollout.deploy(task_type, bad, 10) == "canary"
    assert rollout.promote_canary(task_type, bad) == bad
    return good, bad


def _consistent(task_type: str) -> None:
    """One state a person can read: the champion alias and the version tagged champion agree, nothing else
    claims traffic, and no rollback intent is left over."""
    champion, canary, previous = aliases(task_type)
    versions = {str(v.version): dict(v.tags) for v in registry.versions(task_type)}
    claimed = {v for v, t in versions.items() if t.get("deployment") == "champion"}
    assert claimed == {champion}, (claimed, champion)
    assert not any(rollout.RESTORE_TO in t for t in versions.values()), versions
    if canary is None:
        assert not [v for v, t in versions.items() if t.get("deployment") == "canary"]
    assert previous != champion


@pytest.fixture
def crash_after(monkeypatch):
    """``crash_after(n)``: the n-th alias write (counting from 1) completes, then the worker 'dies'."""

    def arm(n: int) -> list[tuple[str, str]]:
        real, writes = registry.client(), []

        class Dying:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
                real.set_registered_model_alias(name, alias, version)
                writes.append((alias, str(version)))
                if len(writes) == n:
                    raise Crash(f"died after writing {alias} -> v{version}")

        monkeypatch.setattr(rollout, "client", lambda: Dying())
        return writes

    return arm


@pytest.mark.parametrize("crash_at", [1, 2], ids=["after-champion", "after-previous"])
@pytest.mark.parametrize("retry_to", [None, "explicit"])
def test_a_retry_after_a_crash_between_alias_writes_finishes_the_same_move(crash_after, monkeypatch, crash_at: int,
                                                                          retry_to: str | None) -> None:  # fmt: skip
    task_type = f"crash{crash_at}{retry_to or 'prev'}"
    good, bad = _served(task_type)
    assert aliases(task_type) == (bad, None, good)
    to = good if retry_to else None
    writes = crash_after(crash_at)
    with pytest.raises(Crash):
        rollback(task_type, to, key="run-1")
    assert writes[0] == ("champion", good)  # the good version serves from the first alias write on
    monkeypatch.undo()
    assert rollback(task_type, to, key="run-1") == {"task_type": task_type, "from_version": bad, "to_version": good}
    assert aliases(task_type) == (good, None, bad)  # as after an uninterrupted rollback
    _consistent(task_type)
    assert version_tags(task_type, good)[rollout.RESTORED_FROM] == bad
    # the same run retried once more (its task marked failed after it finished): nothing moves
    assert rollback(task_type, to, key="run-1")["to_version"] == good
    assert aliases(task_type) == (good, None, bad)


def test_a_crash_before_the_champion_moves_resumes_the_recorded_target(crash_after, monkeypatch) -> None:
    good, bad = _served("early")
    real = rollout.set_tags
    calls = []

    def dying_set_tags(task_type: str, version: str, tags: dict) -> None:
        real(task_type, version, tags)
        calls.append(version)
        if len(calls) == 2:  # both intent tags written, no alias moved yet
            raise Crash("died before the champion moved")

    monkeypatch.setattr(rollout, "set_tags", dying_set_tags)
    with pytest.raises(Crash):
        rollback("early", None, key="run-1")
    monkeypatch.undo()
    assert aliases("early") == (bad, None, good)
    assert version_tags("early", bad)[rollout.RESTORE_TO] == good  # resolved once, recorded on the champion
    # Meanwhile someone points `previous` elsewhere: the retry still restores the target resolved first.
    other = _version("early", decision="deploy", deployment="previous")
    registry.client().set_registered_model_alias(registry.model_name("early"), registry.PREVIOUS, other)
    assert rollback("early", None, key="run-1")["to_version"] == good
    assert aliases("early") == (good, None, bad)
    _consistent("early")


UNSAFE = [
    ({"deployment": "archived", "archive_reason": "accuracy gain 0.01 < 0.05"},
     "failed the deployment gate and was archived: accuracy gain 0.01 < 0.05"),
    ({"decision": "ARCHIVE", "deployment": "previous"}, "failed the deployment gate"),
    ({"decision": "deploy"}, "was never deployed"),
    ({"decision": "deploy", "deployment": "previous", "ftops.erasure_pending": "erasure u-1234"},
     "trained on data that has since been erased (erasure u-1234)"),
    ({"decision": "deploy", "deployment": "rolled_back", "rollback_reason": "error rate 0.2"},
     "rolled back as a canary and never served as champion"),
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(UNSAFE)))
def test_the_guard_refuses_unsafe_targets_before_anything_moves(case: int) -> None:
    tags, message = UNSAFE[case]
    task_type = f"guard{case}"
    good, bad = _served(task_type)
    target = _version(task_type, **tags)
    with pytest.raises(guards.RollbackRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
        rollback(task_type, target, key="run-1")
    assert aliases(task_type) == (bad, None, good)
    assert rollout.RESTORE_TO not in version_tags(task_type, bad) and rollout.RESTORED_FROM not in version_tags(task_type, target)
    assert isinstance(guards.RollbackRefused("x"), ValueError)  # the task's retry policy fails it at once


def test_the_guard_also_refuses_the_champion_the_canary_and_an_unknown_version() -> None:
    good, bad = _served("same")
    canary = _version("same", decision="deploy")
    rollout.deploy("same", canary, 10)
    with pytest.raises(guards.RollbackRefused, match="already the champion"):
        rollback("same", bad)
    with pytest.raises(guards.RollbackRefused, match="is the canary"):
        rollback("same", canary)
    with pytest.raises(LookupError):
        rollback("same", "99")
    assert aliases("same") == (bad, canary, good)  # a refused rollback retires no canary


def test_a_rollback_never_overwrites_a_champion_that_moved_meanwhile(monkeypatch) -> None:
    # Promote during a rollback (what the shared pool prevents): the compare-and-set refuses, nothing changes.
    good, bad = _served("race")
    newer = _version("race", decision="deploy")
    rollout.deploy("race", newer, 10)
    real = rollout.plan_restore

    def then_promote(*args: Any, **kwargs: Any) -> rollout.RestorePlan:
        plan = real(*args, **kwargs)
        assert rollout.promote_canary("race", newer) == newer  # another writer, between the plan and the move
        return plan

    monkeypatch.setattr(rollout, "plan_restore", then_promote)
    with pytest.raises(rollout.ChampionMovedError, match=f"moved from v{bad} to v{newer}"):
        rollback("race", None, key="run-1")
    monkeypatch.undo()
    assert aliases("race") == (newer, None, bad)
    assert rollout.RESTORE_TO not in version_tags("race", bad)
    assert isinstance(rollout.ChampionMovedError("x"), ValueError)


def test_promote_and_rollback_in_either_order_end_in_one_consistent_state() -> None:
    # What the one-slot ftops_aliases pool guarantees: the two run one after the other, whichever first.
    for first in ("promote", "rollback"):
        task_type = f"order{first}"
        good, bad = _served(task_type)
        canary = _version(task_type, decision="deploy")
        rollout.deploy(task_type, canary, 10)
        if first == "promote":
            assert rollout.promote_canary(task_type, canary) == canary
            assert rollback(task_type, None, key="r")["to_version"] == bad  # back to the champion before it
            assert aliases(task_type) == (bad, None, canary)
        else:
            assert rollback(task_type, None, key="r")["to_version"] == good  # retires the canary too
            assert rollout.promote_canary(task_type, canary) is None  # the judged canary is gone: no move
            assert aliases(task_type) == (good, None, bad)
            assert version_tags(task_type, canary)["deployment"] == "rolled_back"
        _consistent(task_type)
