"""The installed distribution is ours: old unrelated 'pipelines'/'flows' packages exist on PyPI."""

from __future__ import annotations

import shutil
from importlib.metadata import distribution
from pathlib import Path

import flows
import pipelines

REPO = Path(__file__).resolve().parents[1]


def test_top_level_packages_are_this_repository() -> None:
    assert Path(pipelines.__file__).resolve().parent == REPO / "pipelines"
    assert Path(flows.__file__).resolve().parent == REPO / "flows"


def test_distribution_declares_console_script_and_pins() -> None:
    dist = distribution("segflow")
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts["segflow"] == "flows.cli:main"
    requirements = dist.requires or []
    assert "torch==2.14.1" in requirements and "torchvision==0.29.1" in requirements
    assert shutil.which("segflow") is not None or (REPO / ".venv" / "bin" / "segflow").exists()


def test_version_is_reported() -> None:
    assert pipelines.__version__ == distribution("segflow").version
