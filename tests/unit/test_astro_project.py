"""The Astro image serves real users: no offline switch baked in, and the README says how a base model gets in."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_image_does_not_force_hub_offline_mode() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "HF_HUB_OFFLINE" not in dockerfile and "TRANSFORMERS_OFFLINE" not in dockerfile
    assert "HF_HUB_OFFLINE" not in (ROOT / ".env").read_text()


def test_the_readme_says_how_a_fine_tune_gets_its_base_model_in_the_container() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## With the Astro CLI") :]
    section = section[: section.index("\n## ", 5)]
    assert "ftops build-base-model" in section and "hub id" in section
