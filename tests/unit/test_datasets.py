import subprocess
from pathlib import Path

import pytest

from ftops.datasets.versions import DatasetNotFoundError, DatasetRegistry


def _rows(n: int, offset: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(offset, offset + n)]  # fmt: skip


@pytest.fixture
def registry(tmp_path: Path) -> DatasetRegistry:
    return DatasetRegistry(tmp_path / "repo", str(tmp_path / "remote"))


def test_publish_tags_pushes_and_reads_back(registry: DatasetRegistry, tmp_path: Path) -> None:
    v1 = registry.publish("sentiment", _rows(8), _rows(2, 100), {"note": "first"})
    assert v1.created and v1.tag == "dataset/sentiment/v1"
    tags = subprocess.run(["git", "tag"], cwd=registry.root, capture_output=True, text=True).stdout.split()
    assert tags == ["dataset/sentiment/v1"]
    assert any((tmp_path / "remote").rglob("*")), "nothing pushed to the DVC remote"
    assert registry.read(v1, "train") == _rows(8)
    assert registry.read_metadata(v1)["train_rows"] == 8



def test_preference_pairs_are_versioned_with_the_splits_and_never_carried_over(registry: DatasetRegistry) -> None:
    pairs = [{"messages": [{"role": "user", "content": "question 1"}], "chosen": "right", "rejected": "wrong"}]
    plain = registry.publish("sentiment", _rows(5), _rows(2, 50), {})
    with_pairs = registry.publish("sentiment", _rows(5), _rows(2, 50), {}, preference=pairs)
    assert with_pairs.created and with_pairs.content_hash != plain.content_hash  # the pairs are content
    assert registry.read_preference(with_pairs) == pairs and registry.read_preference(plain) == []
    assert registry.read_metadata(with_pairs)["preference_rows"] == 1
    after = registry.publish("sentiment", _rows(6), _rows(2, 50), {})  # the folder held v2's pairs
    assert registry.read_preference(after) == [] and registry.read(after, "preference") == []

def test_same_content_is_the_same_version(registry: DatasetRegistry) -> None:
    v1 = registry.publish("sentiment", _rows(5), _rows(2, 50), {"run": 1})
    again = registry.publish("sentiment", _rows(5), _rows(2, 50), {"run": 2})
    assert again.tag == v1.tag and not again.created
    v2 = registry.publish("sentiment", _rows(6), _rows(2, 50), {"run": 3})
    assert v2.tag == "dataset/sentiment/v2"
    assert [v.version for v in registry.versions("sentiment")] == [1, 2]
    assert registry.read(registry.get("sentiment", "v1"), "train") == _rows(5)  # old version intact
    assert registry.get("sentiment").tag == v2.tag
    assert registry.task_types() == ["sentiment"]


def test_crash_between_push_and_tag_then_retry_makes_one_version(registry: DatasetRegistry, monkeypatch) -> None:
    original = registry._git

    def crash_on_tag(*args: str, check: bool = True) -> str:
        if args[0] == "tag" and len(args) > 1 and args[1] == "-a":
            raise KeyboardInterrupt("worker killed before tagging")
        return original(*args, check=check)

    monkeypatch.setattr(registry, "_git", crash_on_tag)
    with pytest.raises(KeyboardInterrupt):
        registry.publish("city", _rows(4), _rows(1, 9), {})
    monkeypatch.setattr(registry, "_git", original)
    assert registry.versions("city") == []
    version = registry.publish("city", _rows(4), _rows(1, 9), {})
    assert version.created and [v.tag for v in registry.versions("city")] == ["dataset/city/v1"]
    assert registry.read(version, "test") == _rows(1, 9)


def test_unknown_version_is_a_clear_error(registry: DatasetRegistry) -> None:
    with pytest.raises(DatasetNotFoundError, match="no dataset version yet"):
        registry.get("sentiment")
    registry.publish("sentiment", _rows(3), _rows(1, 9), {})
    with pytest.raises(DatasetNotFoundError, match="v7.*known: dataset/sentiment/v1"):
        registry.get("sentiment", "v7")


_KILL_SCRIPT = """
import os, signal, sys
from ftops.datasets.versions import DatasetRegistry
rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(6)]
registry = DatasetRegistry(sys.argv[1], sys.argv[2])
point = sys.argv[3]
original = registry._git
def killing_git(*args, check=True):
    if args[0] == point:  # SIGKILL: no cleanup, no exception handler runs
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, check=check)
registry._git = killing_git
registry.publish("city", rows[:5], rows[5:], {})
"""


@pytest.mark.parametrize("point", ["add", "commit", "tag"], ids=["after-push", "before-commit", "before-tag"])
def test_a_worker_killed_during_versioning_then_rerun_makes_exactly_one_version(tmp_path: Path, point: str) -> None:
    import sys

    repo, remote = tmp_path / "repo", tmp_path / "remote"
    DatasetRegistry(repo, str(remote)).ensure()  # the registry exists; the kill hits a publish, not the set-up
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(repo), str(remote), point], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed by SIGKILL at the chosen step
    registry = DatasetRegistry(repo, str(remote))
    assert registry.versions("city") == []
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(6)]
    version = registry.publish("city", rows[:5], rows[5:], {})
    again = registry.publish("city", rows[:5], rows[5:], {})
    assert version.created and not again.created and again.tag == version.tag
    assert [v.tag for v in registry.versions("city")] == ["dataset/city/v1"]
    assert registry.read(version, "test") == rows[5:]
