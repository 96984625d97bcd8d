"""Shared fixtures: tiny model folders per family and task, and one export of the real MiniLM per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """Factory: tiny_folder(family, task) -> a saved tiny model folder, built once per session."""
    cache: dict[tuple[str, str], Path] = {}

    def make(family: str, task: str = "feature-extraction") -> Path:
        key = (family, task)
        if key not in cache:
            cache[key] = tiny.save(family, task, tmp_path_factory.mktemp(f"{family}-{task}"))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_artifact(tiny_folder, tmp_path_factory):
    """A tiny BERT feature-extraction artifact on both backends, exported once per session.

    BERTSHIP_TINY_ARTIFACT names one exported elsewhere instead: the GPU tests run on an accelerator machine that has
    onnxruntime-gpu but not the exporter's stack (see README, Tests)."""
    if os.environ.get("BERTSHIP_TINY_ARTIFACT"):
        return Path(os.environ["BERTSHIP_TINY_ARTIFACT"])
    from bertship.exporter import export

    out = tmp_path_factory.mktemp("tiny-art") / "bert"
    return export(tiny_folder("bert", "sequence-classification"), out=out, log=lambda _: None)


@pytest.fixture(scope="session")
def task_artifact(tiny_folder, tiny_artifact, tmp_path_factory):
    """Factory: task_artifact(task, family="bert") -> a tiny artifact of that task on both backends, once per session.

    "sentence-embedding" is exported from the feature-extraction folder (mean pooling, no normalization), so both
    share weights and tokenizer.
    """
    from bertship.exporter import export

    cache: dict[tuple[str, str], Path] = {("sequence-classification", "bert"): tiny_artifact}

    def make(task: str, family: str = "bert") -> Path:
        if (task, family) not in cache:
            out = tmp_path_factory.mktemp(f"art-{family}-{task}") / "art"
            if task == "sentence-embedding":
                export(tiny_folder(family, "feature-extraction"), out=out, task=task, pooling="mean",
                       normalize=False, log=lambda _: None)
            else:
                export(tiny_folder(family, task), out=out, task=task, log=lambda _: None)
            cache[(task, family)] = out
        return cache[(task, family)]

    return make


@pytest.fixture(scope="session")
def minilm_artifact(tmp_path_factory):
    """The bundled real all-MiniLM-L6-v2 exported to both backends (about 10 s)."""
    from bertship.exporter import export

    out = tmp_path_factory.mktemp("minilm") / "minilm"
    return export(out=out, log=lambda _: None)
