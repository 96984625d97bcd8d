"""Early exit: off-ramps trained on a frozen fine-tuned classifier, the rule calibrated, the artifact cut into segments
on both backends (fp32 and int8), texts leaving the batch at their off-ramp, and the gate on held-out text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bertship.cli import main
from bertship.runtimes import exits as rules
from bertship.runtimes import load, tasks
from bertship.runtimes.errors import UsageError
from tests import exit_data
from tests.conftest import built_once

pytestmark = pytest.mark.xdist_group("exits")


@pytest.fixture(scope="module")
def exit_folder(fine_tuned, tmp_path_factory):
    """(folder with off-ramps, data folder): the fine-tuned tiny 4-layer BERT with off-ramps after layers 1-3,
    calibrated on dev.tsv."""
    from bertship.exporter.exits import train_exits

    def build(root: Path) -> None:
        train_exits(fine_tuned / "model", fine_tuned / "train.tsv", root / "exits", eval_data=fine_tuned / "dev.tsv",
                    max_accuracy_drop="2%")

    return built_once(tmp_path_factory, "exit-folder", build) / "exits", fine_tuned


@pytest.fixture(scope="module")
def exit_artifact(exit_folder, tmp_path_factory):
    """recipe -> the exit folder exported on both backends, gated on test.tsv (a loose limit: what these tests check is
    the mechanism; the gate's own test below makes it fail)."""
    from bertship.exporter import export

    folder, data = exit_folder

    def make(recipe: str) -> Path:
        built = built_once(tmp_path_factory, f"exit-art-{recipe}",
                           lambda root: export(folder, out=root / "art", recipe=recipe, eval_data=str(data / "test.tsv"),
                                               max_accuracy_drop="20%", log=lambda _: None))
        return built / "art"

    return make


def _test_texts(data: Path) -> list[str]:
    return [line.split("\t")[0] for line in (data / "test.tsv").read_text().splitlines()]


class Counting:
    """A segment runner's stand-in that counts the rows and columns it was given."""

    def __init__(self, runner):
        self.runner, self.rows, self.widths = runner, [], []
        self.backend, self.precision = runner.backend, runner.precision
        self.input_names, self.output_names = runner.input_names, runner.output_names

    def run(self, feeds):
        first = next(iter(feeds.values()))
        self.rows.append(first.shape[0])
        self.widths.append(first.shape[1])
        return self.runner.run(feeds)


def test_the_folder_keeps_the_fine_tuned_model_and_records_both_rules(exit_folder):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder, data = exit_folder
    spec = json.loads((folder / "exits.json").read_text())
    assert spec["layers"] == [1, 2, 3] and spec["labels"] == 3
    measured = spec["calibration"]["measured"]
    assert set(measured) == {"entropy", "patience"}  # both rules measured and recorded
    chosen = measured[spec["rule"]["kind"]]
    # the rule kept is the cheaper one that keeps the accuracy within the limit on dev.tsv
    assert chosen["within"] and chosen["accuracy"] >= spec["calibration"]["full_accuracy"] * (1 - 0.02) - 1e-9
    assert chosen["mean_layers"] == min(m["mean_layers"] for m in measured.values() if m["within"])
    assert all(h[-1] < h[0] for h in spec["training"]["losses"].values())  # every off-ramp learned
    # the backbone and the classifier are the fine-tuned model's, untouched: transformers loads the folder as before
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(["cat cat the train", "movie"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = AutoModelForSequenceClassification.from_pretrained(folder)(**enc).logits
        b = AutoModelForSequenceClassification.from_pretrained(data / "model")(**enc).logits
    assert torch.equal(a, b)


def _midway_rule(model, texts) -> dict:
    """An entropy threshold half-way between two neighbours near the median of the first off-ramp's entropies on
    these texts: about half of them leave at layer 1, and no text sits on the threshold."""
    first = model.encode(texts)["exit1_logits"]
    h = np.sort(rules.normalized_entropy(first))
    i = len(h) // 2
    while i + 1 < len(h) and h[i + 1] - h[i] < 1e-4:
        i += 1
    return {"kind": "entropy", "threshold": float((h[i] + h[i + 1]) / 2)}


@pytest.mark.parametrize("recipe", ["fp32", "int8-static"])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_texts_leave_the_batch_at_their_off_ramp(exit_artifact, exit_folder, recipe, backend):
    art = exit_artifact(recipe)
    texts = _test_texts(exit_folder[1])[:96]
    model = load(art, backend=backend)
    assert model.exits["layers"] == [1, 2, 3] and model.exits["total_layers"] == 4
    for rule in (_midway_rule(model, texts), {"kind": "patience", "patience": 1}):
        # what each text should get: the rule applied to every off-ramp's logits, computed for the whole batch
        every = model.encode(texts)
        ramps = np.stack([every[f"exit{k}_logits"] for k in (1, 2, 3)])
        want_pred, want_layer = rules.apply_offline(rule, ramps, every["logits"], [1, 2, 3], 4)
        counting = [Counting(r) for r in model.runner.runners]
        model.runner.runners = counting
        try:
            got = model.classify(texts, batch_size=32, rule=rule)
        finally:
            model.runner.runners = [c.runner for c in counting]
        layers = np.array([g["exit_layer"] for g in got])
        names = tasks.label_names(model.manifest["task"], 3)
        # a later segment runs on fewer rows and narrower inputs, and int8 kernels chosen by shape round differently:
        # texts whose entropy (or top-2 margin) sits next to the rule's line may go either way; the others may not
        if rule["kind"] == "entropy":
            close = np.abs(rules.normalized_entropy(ramps) - rule["threshold"]) < 0.005
        else:
            top2 = np.sort(ramps, axis=-1)
            close = top2[..., -1] - top2[..., -2] < 0.02
        reached = np.arange(1, 4)[:, None] <= want_layer[None, :]  # the off-ramps each text consulted
        near = (close & reached).any(0)
        assert (~near).mean() >= 0.5
        assert (layers == want_layer)[~near].all(), (layers, want_layer)
        assert all(g["label"] == names[w] for g, w, n in zip(got, want_pred, near) if not n)
        # texts really left: some at layer 1, and fewer rows reached each later segment
        assert (layers < 4).any() and len(set(layers.tolist())) >= 2
        rows = [sum(c.rows) for c in counting]
        assert rows[0] == len(texts) and rows[-1] < rows[0]
        assert rows[1:] == [int((layers > k).sum()) for k in (1, 2, 3)]
        # a segment after an exit is fed only as wide as its longest remaining text
        assert max(counting[0].widths) >= max(counting[1].widths or [0])


def test_off_ramps_stay_float_under_int8_dynamic(exit_artifact, exit_folder):
    """ONNX Runtime's dynamic quantizer renames each Gemm before it quantizes: the off-ramps (Gemms on the first token)
    must still be left float, and decide as the fp32 artifact's do."""
    import onnx

    art = exit_artifact("int8-dynamic")
    manifest = json.loads((art / "manifest.json").read_text())
    quantized = ("MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QLinearMatMul")
    for seg in manifest["backends"]["onnxruntime"]["segments"]:
        nodes = onnx.load(str(art / seg["model"])).graph.node
        assert any(n.op_type in quantized for n in nodes)  # the backbone is int8 …
        assert not [n.name for n in nodes if "/exits/" in n.name and n.op_type in quantized]  # … its off-ramps not
    texts = _test_texts(exit_folder[1])
    got = load(art, backend="onnxruntime").encode(texts)
    ref = load(exit_artifact("fp32"), backend="onnxruntime").encode(texts)
    for k in (1, 2, 3):
        assert (got[f"exit{k}_logits"].argmax(-1) == ref[f"exit{k}_logits"].argmax(-1)).mean() >= 0.9


def test_exits_false_runs_every_layer(exit_artifact, exit_folder):
    model = load(exit_artifact("fp32"))
    texts = _test_texts(exit_folder[1])[:40]
    full = model.classify(texts, exits=False)
    assert {g["exit_layer"] for g in full} == {4}
    logits = model.encode(texts)["logits"]
    names = tasks.label_names(model.manifest["task"], 3)
    assert names == list(exit_data.LABELS)
    assert [g["label"] for g in full] == [names[i] for i in logits.argmax(-1)]
    with pytest.raises(UsageError, match="rule= applies"):
        model.classify(texts, exits=False, rule={"kind": "patience", "patience": 1})


def test_the_artifact_records_segments_and_its_gate(exit_artifact):
    art = exit_artifact("fp32")
    manifest = json.loads((art / "manifest.json").read_text())
    for backend, entry in manifest["backends"].items():
        assert len(entry["segments"]) == 4 and entry["total_layers"] == 4
        assert [s["layer"] for s in entry["segments"]] == [1, 2, 3, 4]
        assert all(s["hidden_in"] in s["inputs"] for s in entry["segments"][1:])
        assert "input_ids" not in entry["segments"][1]["inputs"]  # later segments start from the hidden states
    gate = manifest["exits"]["gate"]
    assert set(gate["backends"]) == {"onnxruntime", "openvino"}
    for r in gate["backends"].values():
        assert r["texts"] == 300 and sum(r["exit_histogram"].values()) == 300 and r["mean_layers"] < 4
    assert main(["verify", str(art)]) == 0  # the segment chain reproduces PyTorch's every output on golden texts


def test_the_gate_refuses_exits_that_cost_too_much(exit_folder, tmp_path, capsys):
    """Off-ramp 1 made to say "cats" for every text, the rule to exit there always: the held-out accuracy falls to
    about a third and nothing is written."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder, data = exit_folder
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    weights = load_file(str(bad / "exits.safetensors"))
    last = "ramps.1.2"
    weights[f"{last}.weight"] = weights[f"{last}.weight"] * 0
    weights[f"{last}.bias"] = weights[f"{last}.bias"] * 0
    weights[f"{last}.bias"][0] = 20.0
    save_file(weights, str(bad / "exits.safetensors"))
    spec = json.loads((bad / "exits.json").read_text())
    spec["rule"] = {"kind": "entropy", "threshold": 0.5}
    (bad / "exits.json").write_text(json.dumps(spec))
    code = main(["export", str(bad), "--eval-data", str(data / "test.tsv"), "--out", str(tmp_path / "art"),
                 "--backends", "onnxruntime"])
    err = capsys.readouterr().err
    assert code == 4, err
    assert "accuracy with exits" in err and not (tmp_path / "art").exists()


def test_bad_input_is_refused_before_any_work(exit_folder, tiny_folder, tmp_path, capsys):
    folder, data = exit_folder
    # an early-exit folder needs held-out text to be gated on
    assert main(["export", str(folder), "--out", str(tmp_path / "a")]) == 2
    assert "--eval-data" in capsys.readouterr().err and not (tmp_path / "a").exists()
    model = data / "model"
    cases = [
        (["--layers", "4"], "off-ramps go after layers 1 to 3"),
        (["--layers", "x"], "not a list of layer numbers"),
        (["--max-accuracy-drop", "150%"], "between 0 and 100"),
        (["--epochs", "0"], "positive whole number"),
    ]
    for extra, message in cases:
        code = main(["exits", str(model), "--data", str(data / "train.tsv"), "--eval-data", str(data / "dev.tsv"),
                     "--out", str(tmp_path / "e"), *extra])
        assert code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "e").exists()
    # off-ramps on a folder that already has them
    assert main(["exits", str(folder), "--data", str(data / "train.tsv"), "--eval-data", str(data / "dev.tsv"),
                 "--out", str(tmp_path / "e")]) == 2
    assert "already has off-ramps" in capsys.readouterr().err
    # an exits.json without its weights
    half = tmp_path / "half"
    import shutil

    shutil.copytree(folder, half)
    (half / "exits.safetensors").unlink()
    assert main(["export", str(half), "--eval-data", str(data / "test.tsv"), "--out", str(tmp_path / "b")]) == 3
    assert "has exits.json but no exits.safetensors" in capsys.readouterr().err


def test_rules_leave_as_documented():
    sure, unsure = np.array([[8.0, 0.0, 0.0]]), np.array([[0.1, 0.0, 0.0]])
    assert rules.normalized_entropy(sure)[0] < 0.01 and rules.normalized_entropy(unsure)[0] > 0.99
    assert rules.normalized_entropy(np.zeros((1, 5)))[0] == pytest.approx(1.0)
    # patience 2: a text leaves once two off-ramps in a row repeat the one before
    ramps = np.stack([np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]),
                      np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 1.0], [0.0, 1.0]])])
    final = np.array([[0.0, 1.0], [1.0, 0.0]])
    pred, layer = rules.apply_offline({"kind": "patience", "patience": 2}, ramps, final, [1, 2, 3, 4], 6)
    assert layer.tolist() == [3, 4] and pred.tolist() == [0, 1]
    pred, layer = rules.apply_offline({"kind": "patience", "patience": 3}, ramps, final, [1, 2, 3, 4], 6)
    assert layer.tolist() == [6, 6] and pred.tolist() == [1, 0]  # nobody left: the model's own prediction
    pred, layer = rules.apply_offline({"kind": "entropy", "threshold": 0.0}, ramps, final, [1, 2, 3, 4], 6)
    assert layer.tolist() == [6, 6]  # threshold 0: no text exits
    for bad in ({"kind": "nope"}, {"kind": "entropy", "threshold": 2}, {"kind": "patience", "patience": 0}, None):
        with pytest.raises(UsageError):
            rules.check_rule(bad)


EXIT_PROFILE = """
name = "exits"
[recipes]
candidates = ["fp32"]
[[runtimes]]
backend = "onnxruntime"
threads = [1]
[workload]
batches = [4]
sequences = [16]
text = "texts.txt"
text_batch = 8
[measure]
warmup = 1
iterations = 2
rounds = 1
passes = 1
[[budgets]]
metric = "mean_exit_layer"
max = {limit}
"""


def test_bench_times_the_exits_and_budgets_name_the_mean_exit_layer(exit_artifact, exit_folder, tmp_path, capsys):
    art = exit_artifact("fp32")
    texts = _test_texts(exit_folder[1])[:64]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    model = load(art, backend="onnxruntime")
    mean = float(np.mean([g["exit_layer"] for g in model.classify(texts)]))
    assert mean < 4  # the calibrated rule lets texts leave
    for limit, code in ((4.0, 0), (max(mean - 0.5, 0.1), 7)):
        (tmp_path / "p.toml").write_text(EXIT_PROFILE.format(limit=limit))
        out = tmp_path / f"bench-{code}.json"
        got = main(["check", str(art), "--profile", str(tmp_path / "p.toml"), "--json", str(out)])
        assert got == code, capsys.readouterr().err
        job = json.loads(out.read_text())["jobs"]["candidate/onnxruntime/threads=1"]
        assert job["exits"]["mean_layers"]["text"] == pytest.approx(mean)
        assert sum(job["exits"]["histogram"]["text"].values()) == len(texts)


def test_serve_and_triton_python_run_the_exits(exit_artifact, exit_folder, tmp_path, capsys):
    import asyncio

    from bertship.runtimes.service import Service

    art = exit_artifact("fp32")
    texts = _test_texts(exit_folder[1])[:24]
    model = load(art, backend="onnxruntime")
    rule = _midway_rule(model, texts)
    model.exits["rule"] = rule  # a rule that splits these texts between layer 1 and later layers
    want = model.classify(texts)
    assert len({w["exit_layer"] for w in want}) >= 2
    service = Service(model)
    try:
        reply = asyncio.run(service.call("/v1/classify", json.dumps({"input": texts}).encode()))
        body = json.loads(reply.json())
    finally:
        service.close()
    assert reply.status == 200
    got = [{k: v for k, v in d.items() if k != "index"} for d in body["data"]]
    assert [(g["label"], g["exit_layer"]) for g in got] == [(w["label"], w["exit_layer"]) for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)
    # a model server's own onnxruntime backend runs one graph: refused; the Python backend runs the chain
    assert main(["deploy", "triton", str(art), "--out", str(tmp_path / "t")]) == 2
    assert "deploy it with `bertship deploy triton --backend python`" in capsys.readouterr().err
    assert main(["deploy", "triton", str(art), "--backend", "python", "--out", str(tmp_path / "p")]) == 0
    copied = tmp_path / "p" / art.name / "1" / "artifact"
    assert sorted(p.name for p in (copied / "onnxruntime").iterdir()) == [f"segment{k}.onnx" for k in range(4)]
    assert load(copied).exits is not None


def test_analyze_shows_where_the_texts_left(exit_folder, tmp_path, capsys):
    folder, _ = exit_folder
    assert main(["analyze", str(folder), "--plot", str(tmp_path / "a.png")]) == 0
    out = capsys.readouterr().out
    spec = json.loads((folder / "exits.json").read_text())
    for kind, m in spec["calibration"]["measured"].items():
        assert sum(m["histogram"].values()) == spec["calibration"]["texts"]
        assert f"  {kind:<8} " in out
    assert (tmp_path / "a-exits.png").stat().st_size > 0


def test_calibration_keeps_the_cheapest_rule_within_the_drop():
    from bertship.exporter.exits import calibrate

    rng = np.random.default_rng(0)
    n = 400
    truth = rng.integers(0, 2, n)
    final = np.where(truth[:, None] == np.arange(2), 4.0, -4.0)  # the full model is always right
    sure = np.where(truth[:, None] == np.arange(2), 6.0, -6.0)
    ramp1 = np.where(np.arange(n)[:, None] < n // 2, sure, 0.0)  # half the texts sure and right, half uniform
    ramp2 = sure.copy()
    cal = calibrate(np.stack([ramp1, ramp2]), final, truth.tolist(), [1, 2], 3, 0.01)
    ent = cal["measured"]["entropy"]
    assert ent["accuracy"] == 1.0 and ent["mean_layers"] == pytest.approx(1.5)  # sure ones at 1, the rest at 2
    assert ent["histogram"] == {"1": n // 2, "2": n // 2, "3": 0}
    assert 0 < ent["rule"]["threshold"] <= 1.0
    # patience 1 needs two off-ramps that agree: 2 layers at best, and a uniform first off-ramp's argmax (class 0)
    # agrees with the second only where the truth is 0: the others run all 3; dearer, so entropy is chosen
    pat = cal["measured"]["patience"]
    assert pat["histogram"]["1"] == 0 and pat["mean_layers"] > 2.0 and cal["rule"] == ent["rule"]


def test_each_backend_calibrates_its_own_rule_on_its_segments(exit_folder, tmp_path):
    """--exit-calibration: the rule is calibrated on each built backend's own off-ramp logits (an int8 chain's early
    states are not PyTorch's), recorded in its entry, and used by load(), verify and the gate."""
    from bertship.exporter import export

    folder, data = exit_folder
    art = export(folder, out=tmp_path / "art", recipe="int8-static", eval_data=str(data / "test.tsv"),
                 exit_calibration=str(data / "dev.tsv"), max_accuracy_drop="20%", log=lambda _: None)
    manifest = json.loads((art / "manifest.json").read_text())
    for backend, entry in manifest["backends"].items():
        cal = entry["exit_calibration"]
        assert entry["exit_rule"] == cal["rule"] and cal["texts"] == 300 and cal["reference"] == "PyTorch full model"
        model = load(art, backend=backend)
        assert model.exits["rule"] == entry["exit_rule"]  # the backend's own, not the folder's
        layers = np.array([g["exit_layer"] for g in model.classify(_test_texts(data)[:50])])
        want = rules.apply_offline(entry["exit_rule"], np.stack([model.encode(_test_texts(data)[:50])[f"exit{k}_logits"]
                                                                 for k in (1, 2, 3)]),
                                   model.encode(_test_texts(data)[:50])["logits"], [1, 2, 3], 4)[1]
        assert (layers == want).mean() >= 0.9
    assert main(["verify", str(art)]) == 0
    # only for an early-exit folder
    with pytest.raises(UsageError, match="--exit-calibration calibrates the exit rule"):
        export(data / "model", out=tmp_path / "x", exit_calibration=str(data / "dev.tsv"), log=lambda _: None)


@pytest.fixture(scope="module")
def both_artifact(fine_tuned, tmp_path_factory):
    """recipe -> (artifact, folder): the fine-tuned tiny classifier with a token schedule (`bertship tokens`), then
    off-ramps trained on its kept tokens (`bertship exits` on that folder), exported on both backends."""
    from bertship.exporter import export
    from bertship.exporter.exits import train_exits
    from bertship.exporter.tokens import search_tokens

    def folder(root: Path) -> None:
        search_tokens(fine_tuned / "model", root / "tokens", eval_data=fine_tuned / "dev.tsv", schedule=BOTH_SCHEDULE,
                      max_accuracy_drop="20%")
        train_exits(root / "tokens", fine_tuned / "train.tsv", root / "both", eval_data=fine_tuned / "dev.tsv",
                    max_accuracy_drop="2%")

    both = built_once(tmp_path_factory, "both-folder", folder) / "both"

    def make(recipe: str) -> tuple[Path, Path]:
        built = built_once(tmp_path_factory, f"both-art-{recipe}",
                           lambda root: export(both, out=root / "art", recipe=recipe,
                                               eval_data=str(fine_tuned / "test.tsv"), max_accuracy_drop="20%",
                                               log=lambda _: None))
        return built / "art", both

    return make


BOTH_SCHEDULE = "0.7,0.5,0.35"


def _op_count(path: Path, op: str) -> int:
    if path.suffix == ".onnx":
        import onnx

        return sum(n.op_type == op for n in onnx.load(str(path)).graph.node)
    import openvino as ov

    return sum(n.get_type_name() == op for n in ov.Core().read_model(str(path)).get_ops())


def _pytorch_both(folder: Path, texts: list[str]) -> dict[str, np.ndarray]:
    """The folder's graph module in PyTorch (tokens eliminated, off-ramps on the kept tokens): every output by name."""
    import torch

    from bertship.exporter.load import load_folder
    from bertship.exporter.to_onnx import cut_points, graph_module

    source = load_folder(folder, "sequence-classification")
    enc = source.tokenizer(texts, padding=True, truncation=True, max_length=source.max_length, return_tensors="pt")
    with torch.no_grad():
        outs = graph_module(source)(*[enc[k] for k in source.family.inputs])
    names = [o.name for o in source.task.outputs] + cut_points(source)
    return {n: o.numpy() for n, o in zip(names, outs)}


@pytest.mark.parametrize("recipe", ["fp32", "int8-static"])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exits_and_token_elimination_run_together(both_artifact, fine_tuned, recipe, backend):
    """One artifact with both: segments hand on the kept tokens and their mask, texts leave per their off-ramp, and
    the outputs are those of the eliminating model with off-ramps on its kept tokens."""
    art, folder = both_artifact(recipe)
    texts = _test_texts(fine_tuned)[:96]
    spec = json.loads((folder / "exits.json").read_text())
    assert spec["tokens_schedule"] == [0.7, 0.5, 0.35] and (folder / "tokens.json").is_file()
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["tokens"]["schedule"] == [0.7, 0.5, 0.35] and manifest["exits"]["layers"] == [1, 2, 3]
    segs = manifest["backends"][backend]["segments"]
    assert all({s["hidden_in"], s["mask_in"]} <= set(s["inputs"]) for s in segs[1:])
    # each segment runs its own layers only: none reaches back to the texts' ids (the layers before it) for a shape,
    # and each eliminates once (its own layer's TopK; the last none)
    assert all("input_ids" not in s["inputs"] for s in segs[1:]), [s["inputs"] for s in segs]
    assert [_op_count(art / s["model"], "TopK") for s in segs] == [1, 1, 1, 0]
    model = load(art, backend=backend)
    every = model.encode(texts)
    ref = _pytorch_both(folder, texts)
    names = ["logits", "exit1_logits", "exit2_logits", "exit3_logits"]
    if recipe == "fp32":  # the chain computes what PyTorch's eliminating model with its off-ramps computes
        for name in names:
            np.testing.assert_allclose(every[name], ref[name], atol=1e-4)
        # and that is not the full model's: tokens really go (the off-ramps read states of fewer tokens)
        from bertship.exporter.load import load_folder
        from bertship.exporter.tokens import outputs

        source = load_folder(folder, "sequence-classification")
        full = outputs(source, None, texts, None, source.max_length)
        assert np.abs(every["logits"] - full).max() > 1e-2
    ramps = np.stack([every[f"exit{k}_logits"] for k in (1, 2, 3)])
    rule = _midway_rule(model, texts)
    want_pred, want_layer = rules.apply_offline(rule, ramps, every["logits"], [1, 2, 3], 4)
    counting = [Counting(r) for r in model.runner.runners]
    seen: list[tuple[int, int]] = []  # (input width, handed-over state width) per later segment run

    def spy(c):
        run = c.run

        def wrapped(feeds):
            if "exit1_hidden" in feeds or "exit2_hidden" in feeds or "exit3_hidden" in feeds:
                state = next(v for k, v in feeds.items() if k.endswith("_hidden"))
                seen.append((feeds["attention_mask"].shape[1] if "attention_mask" in feeds else None, state.shape[1]))
            return run(feeds)
        c.run = wrapped
        return c

    model.runner.runners = [spy(c) for c in counting]
    try:
        got = model.classify(texts, batch_size=32, rule=rule)
    finally:
        model.runner.runners = [c.runner for c in counting]
    layers = np.array([g["exit_layer"] for g in got])
    close = (np.abs(rules.normalized_entropy(ramps) - rule["threshold"]) < 0.005)
    near = (close & (np.arange(1, 4)[:, None] <= want_layer[None, :])).any(0)
    assert (~near).mean() >= 0.5 and (layers == want_layer)[~near].all()
    assert (layers < 4).any() and len(set(layers.tolist())) >= 2
    rows = [sum(c.rows) for c in counting]
    assert rows[0] == len(texts) and rows[1:] == [int((layers > k).sum()) for k in (1, 2, 3)]
    # the state handed on is the kept tokens': narrower than the texts' own inputs
    widths = [(w, s) for w, s in seen if w is not None]
    assert widths and all(s < w for w, s in widths)


def test_the_order_is_tokens_then_exits(both_artifact, exit_folder, fine_tuned, tmp_path, capsys):
    import shutil

    _, both = both_artifact("fp32")
    folder, data = exit_folder
    # a schedule on a folder with off-ramps would change the states they were trained on
    assert main(["tokens", str(folder), "--eval-data", str(data / "dev.tsv"), "--out", str(tmp_path / "t"),
                 "--schedule", BOTH_SCHEDULE]) == 2
    assert "run `bertship tokens` on the fine-tuned model first" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    # off-ramps trained with a schedule do not run without it, nor under another one
    for change in ("drop", "other"):
        bad = tmp_path / change
        shutil.copytree(both, bad)
        if change == "drop":
            (bad / "tokens.json").unlink()
        else:
            spec = json.loads((bad / "tokens.json").read_text())
            spec["schedule"] = [0.9, 0.8, 0.7]
            (bad / "tokens.json").write_text(json.dumps(spec))
        assert main(["export", str(bad), "--eval-data", str(data / "test.tsv"), "--out", str(tmp_path / "a")]) == 3
        err = capsys.readouterr().err
        assert "off-ramps were trained with token schedule [0.7, 0.5, 0.35]" in err, err
        assert not (tmp_path / "a").exists()
