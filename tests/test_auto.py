"""`--recipe auto` on a tiny model: every candidate recorded, the fastest within the limit published and verifiable."""

from __future__ import annotations

import json

from bertship.cli import main
from bertship.exporter import auto
from bertship.runtimes import verify


def test_auto_picks_the_fastest_candidate_within_the_limit(tiny_folder, tmp_path, capsys):
    out = tmp_path / "best"
    code = main(["export", str(tiny_folder("bert", "sequence-classification")), "--recipe", "auto",
                 "--backends", "onnxruntime", "--max-accuracy-drop", "5%", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    choice = manifest["auto"]
    assert [(c["recipe"], c["backend"]) for c in choice["candidates"]] == auto.candidates(("onnxruntime",), [])
    ok = [c for c in choice["candidates"] if c.get("within_limit")]
    best = min(ok, key=lambda c: c["p50_ms"])
    assert choice["winner"] == {"recipe": best["recipe"], "backend": best["backend"]}
    assert manifest["recipe"]["name"] == best["recipe"] and list(manifest["backends"]) == [best["backend"]]
    for c in choice["candidates"]:
        assert c["p50_ms"] > 0 and c["size_bytes"] > 0 and c["metric"] == "cosine"
    verify(out)  # the rewritten manifest and report still match their checksums
    assert "recipe auto: candidates" in (out / "report.md").read_text()


def test_candidates_follow_backend_and_cpu():
    assert ("bf16", "openvino") in auto.candidates(("openvino",), ["amx_bf16"])
    assert ("bf16", "openvino") not in auto.candidates(("openvino",), ["avx2"])
    assert all(b == "onnxruntime" for _, b in auto.candidates(("onnxruntime",), ["avx2"]))
