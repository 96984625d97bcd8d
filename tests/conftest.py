"""Shared fixtures: tiny model folders per family and task, and one export of the real MiniLM per test run.

The suite runs on pytest-xdist workers (pyproject's addopts). What is expensive to make (exported artifacts, plain
graphs) is made once per run, not once per worker: `built_once` makes it under a lock in a folder that every worker
of the run shares, and the others wait for it instead of building it again on the same two cores.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _one_thread_per_worker() -> None:
    """On xdist workers, sessions and PyTorch run on one thread unless a test passes threads=: one worker per core,
    each with thread pools as wide as the machine (ONNX Runtime's spin), only contend. Measured on test_families'
    45 exports, 2 workers on 2 cores: 125 s with the default pools, 99 s with one thread each. Tests of the thread
    options pass threads= explicitly and are unaffected."""
    import torch

    from bertship.runtimes import ort_runner, ov_runner

    torch.set_num_threads(1)
    for cls in (ort_runner.OrtRunner, ov_runner.OpenVinoRunner):
        def init(self, model_path, threads=None, options=None, _init=cls.__init__):
            _init(self, model_path, threads or 1, options)

        cls.__init__ = init


if os.environ.get("PYTEST_XDIST_WORKER"):
    _one_thread_per_worker()

from tests import tiny  # noqa: E402


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """`build(path)` once per test run for all xdist workers; every caller gets the same `path` (a new folder under
    the run's shared temporary folder). A build that failed is tried again by the next caller, and fails there too."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-N/, shared by this run's workers (each has its own popen-gwK/ below it)
    root = base / "built-once"
    root.mkdir(exist_ok=True)
    target, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when build() raises
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            build(target)
            done.touch()
    return target


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """Factory: tiny_folder(family, task) -> a saved tiny model folder, built once per run for all workers (artifacts
    that must share weights, such as a task's feature-extraction and sentence-embedding exports, come from one folder
    even when two workers export them: two trainings of the same tiny tokenizer need not give the same vocabulary)."""
    cache: dict[tuple[str, str], Path] = {}

    def make(family: str, task: str = "feature-extraction") -> Path:
        key = (family, task)
        if key not in cache:
            cache[key] = built_once(tmp_path_factory, f"tiny-{family}-{task}",
                                    lambda root: tiny.save(family, task, root))
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

    folder = built_once(tmp_path_factory, "tiny-art",
                        lambda root: export(tiny_folder("bert", "sequence-classification"), out=root / "bert",
                                            log=lambda _: None))
    return folder / "bert"


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
            def build(root: Path) -> None:
                if task == "sentence-embedding":
                    export(tiny_folder(family, "feature-extraction"), out=root / "art", task=task, pooling="mean",
                           normalize=False, log=lambda _: None)
                else:
                    export(tiny_folder(family, task), out=root / "art", task=task, log=lambda _: None)

            cache[(task, family)] = built_once(tmp_path_factory, f"art-{family}-{task}", build) / "art"
        return cache[(task, family)]

    return make


@pytest.fixture(scope="session")
def fine_tuned(tmp_path_factory):
    """A folder with `model/` (a tiny 4-layer BERT classifier fine-tuned on tests.exit_data's task) and its
    train.tsv, dev.tsv and test.tsv, made once per run: what the dynamic-inference tests start from."""
    from tests import exit_data

    return built_once(tmp_path_factory, "fine-tuned-tiny", lambda root: exit_data.save(root, steps=120))


@pytest.fixture(scope="session")
def minilm_artifact(tmp_path_factory):
    """The bundled real all-MiniLM-L6-v2 exported to both backends (about 10 s)."""
    from bertship.exporter import export

    return built_once(tmp_path_factory, "minilm", lambda root: export(out=root / "minilm", log=lambda _: None)) \
        / "minilm"
