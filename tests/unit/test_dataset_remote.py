"""Dataset versions on a shared git remote: two workers that share nothing but the git remote and the DVC
remote (separate local repositories, as on two machines) see, read and number each other's versions."""

import subprocess
from pathlib import Path

import pytest

from ftops.datasets.versions import DatasetRegistry


def _rows(n: int, offset: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(offset, offset + n)]  # fmt: skip


def _remote_tags(remote: Path) -> list[str]:
    out = subprocess.run(["git", "tag", "--list", "dataset/*"], cwd=remote, capture_output=True, text=True, check=True)
    return sorted(out.stdout.split())


@pytest.fixture
def shared(tmp_path: Path) -> tuple[Path, Path]:
    """The git remote (a bare repository, created on first use) and the DVC remote: all that workers share."""
    return tmp_path / "shared" / "datasets.git", tmp_path / "shared" / "dvc"


def _worker(tmp_path: Path, name: str, shared: tuple[Path, Path]) -> DatasetRegistry:
    git_remote, dvc_remote = shared
    return DatasetRegistry(tmp_path / name / "datasets", str(dvc_remote), str(git_remote))


def test_a_fresh_worker_reads_and_continues_another_workers_versions(tmp_path: Path, shared) -> None:
    a = _worker(tmp_path, "a", shared)
    v1 = a.publish("sentiment", _rows(4), _rows(1, 50), {"by": "a"})
    v2 = a.publish("sentiment", _rows(6), _rows(2, 50), {"by": "a"})
    assert [v1.tag, v2.tag] == ["dataset/sentiment/v1", "dataset/sentiment/v2"]
    assert _remote_tags(shared[0]) == [v1.tag, v2.tag]  # published = on the remote, not only in a's repo

    b = _worker(tmp_path, "b", shared)
    assert not b.root.exists()
    assert [v.tag for v in b.versions("sentiment")] == [v1.tag, v2.tag]  # cloned on first use
    assert b.task_types() == ["sentiment"]
    assert b.read(b.get("sentiment"), "train") == _rows(6)  # content from the DVC remote, through dvc.api
    assert b.read_metadata(b.get("sentiment", "v1"))["by"] == "a"
    assert b.publish("sentiment", _rows(6), _rows(2, 50), {}).tag == v2.tag  # same content: a's version

    v3 = b.publish("sentiment", _rows(9), _rows(2, 50), {"by": "b"})
    assert v3.created and v3.tag == "dataset/sentiment/v3"  # numbered after a's, no collision
    assert a.latest("sentiment") == v3.__class__("sentiment", 3, v3.content_hash)  # a sees b's version
    assert a.read(a.get("sentiment", 3), "train") == _rows(9)
    v4 = a.publish("sentiment", _rows(10), _rows(2, 50), {"by": "a"})
    assert v4.tag == "dataset/sentiment/v4" and _remote_tags(shared[0])[-1] == v4.tag
    assert b.url == a.url == shared[0].resolve().as_uri()
    subprocess.run(["git", "tag", "-d", v4.tag], cwd=shared[0], check=True, capture_output=True)  # erased there
    assert [v.version for v in a.versions("sentiment")] == [1, 2, 3]  # ... and so on every worker


def test_a_version_number_taken_meanwhile_by_another_writer_is_retried_with_the_next(
    tmp_path: Path, shared, monkeypatch
) -> None:
    a, b = _worker(tmp_path, "a", shared), _worker(tmp_path, "b", shared)
    a.publish("city", _rows(3), _rows(1, 9), {})
    original = b._write_and_commit

    def a_publishes_first(*args, **kwargs):  # b has fetched v1; a publishes v2 before b pushes its version
        if not a_published:
            a_published.append(a.publish("city", _rows(5), _rows(1, 9), {}))
        return original(*args, **kwargs)

    a_published: list = []
    monkeypatch.setattr(b, "_write_and_commit", a_publishes_first)
    mine = b.publish("city", _rows(7), _rows(1, 9), {})
    assert a_published[0].tag == "dataset/city/v2" and mine.tag == "dataset/city/v3"
    assert [v.content_hash for v in a.versions("city")][1:] == [a_published[0].content_hash, mine.content_hash]


def test_a_push_that_failed_is_made_good_by_the_next_publish(tmp_path: Path, shared) -> None:
    a = _worker(tmp_path, "a", shared)
    a.publish("city", _rows(3), _rows(1, 9), {})
    hook = shared[0] / "hooks" / "pre-receive"  # the remote refuses pushes for a while (after a's tag is made)
    hook.write_text("#!/bin/sh\necho remote is read-only for maintenance >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(RuntimeError, match="dataset/city/v2 to the git remote .* failed.*maintenance"):
        a.publish("city", _rows(4), _rows(1, 9), {})
    assert _remote_tags(shared[0]) == ["dataset/city/v1"] and [v.version for v in a.versions("city")] == [1]
    hook.unlink()
    again = a.publish("city", _rows(4), _rows(1, 9), {})
    assert again.created and again.tag == "dataset/city/v2"
    assert _remote_tags(shared[0]) == ["dataset/city/v1", "dataset/city/v2"]
    assert _worker(tmp_path, "b", shared).read(again, "train") == _rows(4)


def _killed_at(registry: DatasetRegistry, monkeypatch, command: str):
    original = registry._git

    def killed(*args: str, check: bool = True) -> str:
        if args[0] == command and (command != "push" or "--atomic" in args):
            raise KeyboardInterrupt(f"worker killed at git {command}")
        return original(*args, check=check)

    monkeypatch.setattr(registry, "_git", killed)
    return original


@pytest.mark.parametrize("command", ["push", "update-ref"], ids=["before-push", "after-push"])
def test_a_worker_killed_around_the_push_then_rerun_makes_exactly_one_version(
    tmp_path: Path, shared, monkeypatch, command: str
) -> None:
    a = _worker(tmp_path, "a", shared)
    original = _killed_at(a, monkeypatch, command)
    with pytest.raises(KeyboardInterrupt):
        a.publish("city", _rows(3), _rows(1, 9), {})
    monkeypatch.setattr(a, "_git", original)
    assert _remote_tags(shared[0]) == ([] if command == "push" else ["dataset/city/v1"])
    assert a._local_versions("city") == []  # never a local tag the remote lacks
    again = a.publish("city", _rows(3), _rows(1, 9), {})
    assert again.tag == "dataset/city/v1" and again.created == (command == "push")
    assert _remote_tags(shared[0]) == ["dataset/city/v1"]
    b = _worker(tmp_path, "b", shared)
    assert b.read(b.get("city"), "test") == _rows(1, 9)


def test_a_registry_that_had_no_remote_publishes_its_versions_when_given_one(tmp_path: Path, shared) -> None:
    local = DatasetRegistry(tmp_path / "old" / "datasets", str(shared[1]))
    v1 = local.publish("city", _rows(3), _rows(1, 9), {})
    upgraded = DatasetRegistry(local.root, str(shared[1]), str(shared[0]))
    upgraded.ensure()
    assert _remote_tags(shared[0]) == [v1.tag]
    with pytest.raises(RuntimeError, match="git fetch"):  # a remote that cannot be reached is an error
        DatasetRegistry(local.root, str(shared[1]), "file:///nonexistent/datasets.git").versions("city")
    assert _worker(tmp_path, "b", shared).read(v1, "train") == _rows(3)


def test_a_version_a_killed_worker_did_not_push_is_numbered_after_the_remotes(
    tmp_path: Path, shared, monkeypatch
) -> None:
    a, b = _worker(tmp_path, "a", shared), _worker(tmp_path, "b", shared)
    a.publish("city", _rows(3), _rows(1, 9), {})
    original = _killed_at(a, monkeypatch, "push")
    with pytest.raises(KeyboardInterrupt):
        a.publish("city", _rows(4), _rows(1, 9), {})  # would have been v2
    monkeypatch.setattr(a, "_git", original)
    theirs = b.publish("city", _rows(5), _rows(1, 9), {})  # the retry ran on b: v2 is b's
    assert theirs.tag == "dataset/city/v2"
    assert a.get("city", "v2").content_hash == theirs.content_hash
    mine = a.publish("city", _rows(4), _rows(1, 9), {})
    assert mine.created and mine.tag == "dataset/city/v3"
    assert [v.content_hash for v in b.versions("city")][1:] == [theirs.content_hash, mine.content_hash]


def test_a_local_tag_that_differs_from_the_remotes_yields_to_it(tmp_path: Path, shared, caplog) -> None:
    old = DatasetRegistry(tmp_path / "old" / "datasets", str(shared[1]))  # ran without a remote
    mine = old.publish("city", _rows(4), _rows(1, 9), {})
    theirs = _worker(tmp_path, "b", shared).publish("city", _rows(5), _rows(1, 9), {})
    assert mine.tag == theirs.tag == "dataset/city/v1"
    upgraded = DatasetRegistry(old.root, str(shared[1]), str(shared[0]))
    assert upgraded.get("city").content_hash == theirs.content_hash and "the remote's is the published one" in caplog.text
    again = upgraded.publish("city", _rows(4), _rows(1, 9), {})
    assert again.created and again.tag == "dataset/city/v2"


def test_the_training_runs_lineage_is_the_remotes_url_and_tag(tmp_path: Path, shared, mlflow_store) -> None:
    import json

    import mlflow

    from ftops.pipeline.finetune import candidate_run

    worker = _worker(tmp_path, "a", shared)
    version = worker.publish("city", _rows(3), _rows(1, 9), {})
    with candidate_run("city", "key-1", version, worker.url, run_name="lineage", tags={}, params={}) as (run, _):
        pass
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.tags["dataset_repo"] == shared[0].resolve().as_uri() and str(tmp_path / "a") not in str(logged)
    source = json.loads(logged.inputs.dataset_inputs[0].dataset.source)
    assert source["url"] == f"{shared[0].resolve().as_uri()}@dataset/city/v1"


def test_the_configs_registry_publishes_to_a_bare_repository_beside_it_by_default(tmp_path: Path) -> None:
    from ftops.core.config import FtopsConfig, StorageConfig
    from ftops.pipeline.common import dataset_registry

    storage = StorageConfig(dataset_repo=str(tmp_path / "datasets"), dvc_remote=str(tmp_path / "dvc"))
    assert dataset_registry(FtopsConfig(storage=storage)).git_remote == str(tmp_path / "datasets-remote.git")
    shared = storage.model_copy(update={"dataset_remote": "git@git.example.com:ml/ftops-datasets.git"})
    registry = dataset_registry(FtopsConfig(storage=shared))
    assert registry.git_remote == registry.url == "git@git.example.com:ml/ftops-datasets.git"
