"""Export memory: the weights sized from safetensors headers, the estimate, and the refusal (exit 12) before a stage
would exceed the memory available; per-stage peaks in the manifest are checked in test_external_data.py."""

from __future__ import annotations

import pytest

from bertship.cli import main
from bertship.exporter import memory, pipeline
from bertship.runtimes.errors import EXIT_CODES, MemoryNeedError
from tests import tiny


def test_fp32_weights_are_sized_from_headers_whatever_the_stored_dtype(tmp_path):
    import torch

    model, tokenizer = tiny.build("bert", "feature-extraction")
    numel = sum(t.numel() for t in model.state_dict().values())
    model.save_pretrained(tmp_path / "fp32")
    assert memory.fp32_weight_mb(tmp_path / "fp32") == pytest.approx(numel * 4 / 2**20)
    model.to(torch.float16).save_pretrained(tmp_path / "fp16")  # half the file, the same fp32 need once loaded
    assert memory.fp32_weight_mb(tmp_path / "fp16") == pytest.approx(numel * 4 / 2**20)
    assert memory.fp32_weight_mb(tmp_path) is None  # no weights: nothing to size


def test_estimate_grows_with_the_weights_and_skips_optimize_without_onnx_runtime():
    small, large = memory.estimate(100, True), memory.estimate(2000, True)
    assert all(large[k] > small[k] for k in small)
    assert "optimize" not in memory.estimate(100, False)


def test_export_is_refused_before_loading_when_memory_is_short(tiny_folder, tmp_path, monkeypatch, capsys):
    folder = tiny_folder("bert", "feature-extraction")
    monkeypatch.setattr(pipeline, "available_memory_mb", lambda: 300.0)
    out = tmp_path / "art"
    code = main(["export", str(folder), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == MemoryNeedError.exit_code == 12 and 12 in EXIT_CODES
    assert "needs about" in err and "0.3 GB is available" in err and "--no-memory-check" in err
    assert "[bertship] load" not in err  # refused before the model was loaded
    assert not out.exists() and not list(tmp_path.glob(".art*"))
    assert main(["export", str(folder), "--no-memory-check", "--backends", "onnxruntime", "--out", str(out)]) == 0


def test_estimate_is_logged_when_memory_suffices(tiny_folder, tmp_path, capsys):
    assert main(["export", str(tiny_folder("bert", "feature-extraction")), "--backends", "onnxruntime",
                 "--out", str(tmp_path / "art")]) == 0
    assert "[bertship] memory   estimated peak" in capsys.readouterr().err


def test_estimate_covers_every_stage_peak_the_export_benchmark_measured():
    """The per-stage lines are fitted on benchmarks/results/export_memory.json (MiniLM to XLM-R large): every stage
    peak measured there, for any size, recipe or layout, is at or under its estimate. A refit that left one out would
    let an export the estimate allowed run into the kernel's OOM killer."""
    import json
    from pathlib import Path

    rows = json.loads((Path(__file__).parents[1] / "benchmarks/results/export_memory.json").read_text())["rows"]
    assert {r["size"] for r in rows} >= {"minilm-l6", "bert-large", "xlmr-large"}
    for row in rows:
        estimate = memory.estimate(row["weights_mb"], True)
        for recipe, rec in row["recipes"].items():
            for stage, peak in (rec.get("stages_peak_rss_mb") or {}).items():
                if stage in estimate:
                    assert peak <= estimate[stage], (row["size"], recipe, stage, peak, estimate[stage])
