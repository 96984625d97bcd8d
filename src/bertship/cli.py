"""The `bertship` command: a thin shell over the library. `main(argv) -> exit code`; tests call it directly."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from bertship.runtimes.errors import EXIT_CODES, BackendMissingError, BertshipError, UsageError


def _exit_codes_text() -> str:
    return "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in sorted(EXIT_CODES.items()))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertship",
        description="Export, verify, benchmark and deploy compressed transformer encoders on ONNX Runtime and OpenVINO.",
        epilog=_exit_codes_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ex = sub.add_parser("export", help="export a model to a verified artifact (needs the export extra)",
                        epilog=_exit_codes_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("model", nargs="?", default=None,
                    help="Hugging Face model folder (default: the bundled all-MiniLM-L6-v2)")
    ex.add_argument("--out", required=True, help="artifact directory to write (refused if it exists, unless --force)")
    ex.add_argument("--task", default=None,
                    help="feature-extraction, sentence-embedding, sequence-classification, token-classification, "
                         "question-answering, rerank, sparse-embedding or multi-vector (default: from the folder: a "
                         "sentence-transformers SentenceTransformer, CrossEncoder or SparseEncoder, else "
                         "config.architectures)")
    ex.add_argument("--backends", default=None,
                    help="comma-separated onnxruntime,openvino (default: every backend the recipe supports)")
    ex.add_argument("--max-length", type=int, default=None, help="longest sequence accepted (default: the model's)")
    ex.add_argument("--pooling", default=None,
                    help="sentence-embedding pooling: mean, cls, max, mean_sqrt_len_tokens, weightedmean or lasttoken "
                         "(several joined by + are concatenated); default: the folder's Pooling module, else mean")
    ex.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                    help="L2-normalize sentence embeddings inside the graph")
    ex.add_argument("--recipe", default="fp32", help="fp32, bf16, fp16, int8-dynamic, int8-static, int8-mixed, "
                    "int8-weight-only, int4-weight-only or auto (default: %(default)s; `bertship recipes` explains each)")
    ex.add_argument("--calibration", default=None,
                    help="int8-static: .txt (one text per line) or .jsonl ({\"text\": …}) of your texts; default: bundled")
    ex.add_argument("--calibration-method", default=None, help="int8-static: minmax (default), entropy or percentile")
    ex.add_argument("--max-accuracy-drop", default=None,
                    help="int8 recipes: keep the most sensitive layers in float until the score stays within this "
                         "drop of fp32, e.g. 1%% (relative)")
    ex.add_argument("--eval-data", default=None, help="labelled data (.tsv text<TAB>label) the drop is judged on; "
                    "default: output cosine vs fp32 on the calibration text")
    ex.add_argument("--exit-calibration", default=None, help="early-exit folder: labelled data (not --eval-data) "
                    "each backend's exit rule is calibrated on, from its own segments' logits")
    ex.add_argument("--min-cosine", default=None,
                    help="embeddings: every text's vector must keep at least this cosine vs fp32, alone and batched, "
                         "on the calibration (or --eval-data) texts and the golden texts, e.g. 0.99; int8-mixed "
                         "searches for it (default 0.99), other recipes are refused when they miss it")
    ex.add_argument("--min-rank-agreement", default=None,
                    help="rerank, sparse-embedding, multi-vector: the share of golden queries whose best document "
                         "must stay first vs fp32 (and, for sparse, of each text's top-10 terms kept); default 1.0 "
                         "for fp32, 0.9 for the other recipes")
    ex.add_argument("--allow-batch-dependence", action="store_true",
                    help="accept an embedding artifact whose vectors change with batch-mates and padding (alone vs "
                         "batched cosine < 0.999, e.g. int8-dynamic); recorded in the manifest")
    ex.add_argument("--compact", action="store_true",
                    help="remove dead attention heads and FFN neurons (structured zeros) before export: a smaller "
                         "dense model with the same outputs (see `bertship analyze`)")
    ex.add_argument("--profile", default=None, help="device profile (name or TOML file): its candidate recipes, "
                    "backends and model format decide, as with --recipe auto")
    ex.add_argument("--ort-graph", default="plain", help="ONNX Runtime recipes start from the graph as exported "
                    "(plain, default) or after ORT's offline transformer fusions (fused)")
    ex.add_argument("--allow-missing-fusions", action="store_true",
                    help="accept a graph where ORT's expected fusions are missing (recorded in the manifest)")
    ex.add_argument("--external-data", default="auto", help="where ONNX models keep their weights: auto (inside the "
                    "graph file unless past protobuf's 2 GB limit, then in one model.onnx.data beside it) or always "
                    "(always in model.onnx.data)")
    ex.add_argument("--no-memory-check", action="store_true", help="export even when the peak memory estimated from "
                    "the weights exceeds what this machine has available (otherwise exit 12)")
    ex.add_argument("--threads", type=int, default=None, help="threads for the verification runs")
    ex.add_argument("--target-cpu", default=None, help="CPU class whose int8 arithmetic to build for: x86-vnni, "
                    "x86-novnni (AVX2, or AVX-512 without VNNI: 7-bit weights), arm64-dot, arm64 (default: this "
                    "machine's; see `bertship recipes`)")
    ex.add_argument("--force", action="store_true", help="replace an existing artifact at --out")
    ex.add_argument("--allow-pickle", action="store_true",
                    help="accept pytorch_model.bin weights (loading a pickle runs code: only for files you trust)")

    ve = sub.add_parser("verify", help="re-check an artifact's checksums and outputs on this machine (torch-free)")
    ve.add_argument("artifact")
    ve.add_argument("--backends", default=None, help="comma-separated (default: every backend in the artifact)")
    ve.add_argument("--threads", type=int, default=None)
    ve.add_argument("--json", action="store_true", help="print the fidelity report as JSON")

    sub.add_parser("recipes", help="list every recipe: what it does, which backends and CPUs it suits")

    ev = sub.add_parser("eval", help="task accuracy (classification) or cosine vs a reference artifact (torch-free)")
    ev.add_argument("artifact")
    ev.add_argument("--data", required=True, help="classification: .tsv text<TAB>label (or .jsonl); else one text a line")
    ev.add_argument("--reference", default=None, help="artifact to compare outputs with, e.g. the fp32 export")
    ev.add_argument("--backend", default=None)
    ev.add_argument("--threads", type=int, default=None)
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--json", action="store_true", help="print the result as JSON")

    an = sub.add_parser("analyze", help="per-layer sparsity report of a model folder; never changes the model",
                        epilog=_exit_codes_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    an.add_argument("model", nargs="?", default=None,
                    help="Hugging Face model folder (default: the bundled all-MiniLM-L6-v2)")
    an.add_argument("--seq-len", type=int, default=128, help="sequence length the FLOPs are counted for (default: 128)")
    an.add_argument("--json", dest="json_file", default=None, help="also write the full report as JSON to this file")
    an.add_argument("--plot", default=None, help="also write a per-layer heat map (.png; needs the plots extra)")

    pr = sub.add_parser("prune", help="zero the least important heads and FFN neurons into a new checkpoint folder",
                        epilog=_exit_codes_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("model", help="Hugging Face model folder")
    pr.add_argument("--out", required=True, help="checkpoint folder to write (refused if it exists, unless --force)")
    pr.add_argument("--heads", default="0%", help="fraction of attention heads to zero, e.g. 50%% (default: 0%%)")
    pr.add_argument("--ffn", default="0%", help="fraction of FFN neurons to zero, e.g. 50%% (default: 0%%)")
    pr.add_argument("--data", default=None, help="labelled .tsv (text<TAB>label) or .jsonl: gradient importance "
                    "(Michel et al. 2019) with the checkpoint's classification head; default: weight magnitude")
    pr.add_argument("--ranking", default="global", help="global (default: layers keep different counts) or per-layer")
    pr.add_argument("--recover-steps", type=int, default=0, help="fine-tune steps on --data after pruning (default: 0)")
    pr.add_argument("--batch-size", type=int, default=16)
    pr.add_argument("--max-length", type=int, default=128, help="tokens per --data row (default: %(default)s)")
    pr.add_argument("--lr", type=float, default=2e-5, help="recovery learning rate (default: %(default)g)")
    pr.add_argument("--distill", action="store_true", help="recover with the unpruned model as teacher: half "
                    "cross-entropy, half logit distillation at temperature 2 (Hinton et al. 2015)")
    pr.add_argument("--importance-rows", type=int, default=None,
                    help="score importance on the first N rows of --data only (default: all); recovery uses all")
    pr.add_argument("--force", action="store_true", help="replace a folder an earlier `bertship prune` wrote")

    ee = sub.add_parser("exits", help="train early-exit off-ramps for a fine-tuned classifier and calibrate the exit "
                        "rule (needs the export extra)", epilog=_exit_codes_text(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ee.add_argument("model", help="fine-tuned sequence-classification folder (Hugging Face), or the folder `bertship "
                    "tokens` wrote for it: the off-ramps then learn on the kept tokens and both run in one artifact")
    ee.add_argument("--data", required=True, help="training texts, .tsv (text<TAB>label or text<TAB>pair<TAB>label) "
                    "or .jsonl: the off-ramps learn the model's own predictions on them (labels are not used)")
    ee.add_argument("--eval-data", required=True, help="labelled held-out texts the exit rule is calibrated on")
    ee.add_argument("--out", required=True, help="folder to write: the model plus exits.safetensors and exits.json")
    ee.add_argument("--layers", default=None, help="layers to put off-ramps after, e.g. 2,4 (default: every layer "
                    "but the last)")
    ee.add_argument("--max-accuracy-drop", default="1%", help="accuracy the exits may cost, relative to the full "
                    "model on --eval-data (default: %(default)s)")
    ee.add_argument("--pooling", default="cls", choices=["cls", "cls+mean"], help="what an off-ramp reads: the "
                    "layer's first token (default), or the first token beside the mean of the real tokens")
    ee.add_argument("--epochs", type=int, default=30, help="distillation epochs over the cached states (default: "
                    "%(default)s)")
    ee.add_argument("--lr", type=float, default=1e-3, help="off-ramp learning rate (default: %(default)g)")
    ee.add_argument("--batch-size", type=int, default=32)
    ee.add_argument("--max-length", type=int, default=128, help="tokens per text (default: %(default)s)")
    ee.add_argument("--force", action="store_true", help="replace a folder an earlier `bertship exits` wrote")

    tk = sub.add_parser("tokens", help="token elimination: search a retention schedule (tokens kept after each "
                        "layer) on held-out text, optionally recover (needs the export extra)", epilog=_exit_codes_text(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tk.add_argument("model", help="fine-tuned sequence-classification folder, or a sentence-embedding folder")
    tk.add_argument("--eval-data", required=True, help="held-out texts the schedule is judged on (labelled .tsv for "
                    "a classifier; one text a line for embeddings)")
    tk.add_argument("--out", required=True, help="folder to write: the model plus tokens.json")
    tk.add_argument("--task", default=None, help="sequence-classification or sentence-embedding (default: the "
                    "folder's own)")
    tk.add_argument("--schedule", default=None, help="shares kept after each layer but the last, e.g. 0.8,0.6,0.5 "
                    "(default: searched, keep r^layer for r from 0.5 up)")
    tk.add_argument("--max-accuracy-drop", default=None, help="a classifier's limit, relative (default: 1%%)")
    tk.add_argument("--min-cosine", default=None, help="sentence embeddings' limit: lowest per-text cosine against "
                    "the unchanged model (default: 0.99)")
    tk.add_argument("--data", default=None, help="training texts for --recover-steps")
    tk.add_argument("--recover-steps", type=int, default=0, help="distillation steps from the unchanged model with "
                    "the schedule applied (default: 0)")
    tk.add_argument("--lr", type=float, default=2e-5, help="recovery learning rate (default: %(default)g)")
    tk.add_argument("--batch-size", type=int, default=32)
    tk.add_argument("--max-length", type=int, default=128, help="tokens per text (default: %(default)s)")
    tk.add_argument("--force", action="store_true", help="replace a folder an earlier `bertship tokens` wrote")

    ins = sub.add_parser("inspect", help="show what an artifact holds (torch-free)")
    ins.add_argument("artifact")
    ins.add_argument("--json", action="store_true", help="print the manifest")

    de = sub.add_parser("deploy", help="write a Triton model repository or an OpenVINO Model Server layout (torch-free)")
    targets = de.add_subparsers(dest="target", required=True, metavar="TARGET")
    tr = targets.add_parser("triton", help="encoder + Python-backend tokenizer + ensemble (clients send text)")
    tr.add_argument("artifact")
    tr.add_argument("--out", required=True, help="model repository to write (refused if it exists, unless --force)")
    tr.add_argument("--backend", default="onnxruntime",
                    help="onnxruntime, openvino (encoder + tokenizer + ensemble) or python (the bertship runtime inside Triton's Python backend: text in, task results out; "
                    "default: %(default)s)")
    tr.add_argument("--runtime", default=None, help="--backend python: the artifact's backend it runs, onnxruntime "
                    "or openvino (default: the artifact's first)")
    tr.add_argument("--truncation", default="truncate", help="--backend python: truncate (default) or error (a text "
                    "past the max length gets an error response)")
    tr.add_argument("--bucket-size", type=int, default=16, help="--backend python: the most texts one model run takes "
                    "from a dynamic batch (default: %(default)s)")
    tr.add_argument("--tune-batching", action=argparse.BooleanOptionalAction, default=True,
                    help="--backend python: measure a model run's fixed cost at start and cut each dynamic batch's "
                    "length-sorted texts where cheapest (default: on; off: every --bucket-size texts)")
    tr.add_argument("--queue-delay-us", type=int, default=0, help="the dynamic batcher's max_queue_delay_microseconds "
                    "(default: %(default)s: a free instance takes what is queued at once)")
    tr.add_argument("--max-batch", type=int, default=32, help="max_batch_size of each model (default: %(default)s)")
    tr.add_argument("--instances", type=int, default=None, help="CPU instances per model (default: 2 for --backend "
                    "python, else 1)")
    tr.add_argument("--threads", type=int, default=None, help="threads per encoder instance (default: the backend's: "
                    "every core)")
    tr.add_argument("--name", default=None, help="model name (default: from the artifact folder)")
    tr.add_argument("--pairs", action=argparse.BooleanOptionalAction, default=None,
                    help="take a TEXT_PAIR input too (default: only for question-answering)")
    tr.add_argument("--force", action="store_true", help="replace an existing repository at --out")
    _check_options(tr)
    ovm = targets.add_parser("ovms", help="OpenVINO IR + config.json for OpenVINO Model Server (clients send token ids)")
    ovm.add_argument("artifact")
    ovm.add_argument("--out", required=True, help="folder to write (refused if it exists, unless --force)")
    ovm.add_argument("--threads", type=int, default=None, help="INFERENCE_NUM_THREADS (default: OpenVINO's)")
    ovm.add_argument("--name", default=None, help="model name (default: from the artifact folder)")
    ovm.add_argument("--force", action="store_true", help="replace an existing folder at --out")
    _check_options(ovm)

    sv = sub.add_parser("serve", help="serve an artifact over HTTP on Ray Serve (OpenAI /v1/embeddings and task "
                        "endpoints), in the foreground until Ctrl-C (torch-free)", epilog=_exit_codes_text(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sv.add_argument("artifact")
    sv.add_argument("--engine", default="ray", choices=["ray"], help="the serving engine (default: %(default)s)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for "
                    "every interface)")
    sv.add_argument("--port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    sv.add_argument("--replicas", type=int, default=1, help="model replicas (default: %(default)s)")
    sv.add_argument("--threads", type=int, default=None, help="inference threads per replica (default: the cluster's "
                    "CPUs / replicas)")
    sv.add_argument("--backend", default=None, help="onnxruntime or openvino (default: the artifact's first)")
    sv.add_argument("--address", default=None, help="join a running Ray cluster (default: $RAY_ADDRESS, else a local "
                    "Ray instance)")
    sv.add_argument("--name", default=None, help="model name in responses (default: the artifact folder's)")
    sv.add_argument("--truncation", default="truncate", help="truncate (default) or error: a text past the max "
                    "length gets 422 (a request may set its own)")
    sv.add_argument("--max-batch-tokens", type=int, default=None, help="padded tokens per model run (default: 8192)")
    sv.add_argument("--max-queue-tokens", type=int, default=None, help="tokens a replica holds before it answers 503 "
                    "(default: 131072)")

    pf = sub.add_parser("profiles", help="list the device profiles, or show one and whether this machine fits it")
    pf.add_argument("action", nargs="?", choices=["show"], help="show NAME: print one profile")
    pf.add_argument("name", nargs="?", help="a shipped profile name or a .toml file")
    pf.add_argument("--json", action="store_true", help="print the profile as JSON")

    for name, text in (("bench", "time an artifact under a device profile, each job in its own process (torch-free)"),
                       ("check", "judge a profile's budgets (and a baseline) on this machine; exit 0 or 7/8/9")):
        bc = sub.add_parser(name, help=text, epilog=_exit_codes_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
        bc.add_argument("artifact", nargs="?" if name == "check" else None, help="the artifact directory")
        bc.add_argument("--profile", required=True, help="a profile name (`bertship profiles`) or a .toml file")
        bc.add_argument("--reference", default=None,
                        help="an artifact timed in the same run, for budgets relative to it (e.g. the fp32 export)")
        bc.add_argument("--shapes", default=None, help="BATCHxSEQUENCE list instead of the profile's, e.g. 1x128,8x128")
        bc.add_argument("--threads", default=None, help="thread settings instead of the profile's, e.g. 1,2 or cores")
        bc.add_argument("--backends", default=None, help="only these of the profile's backends, e.g. onnxruntime")
        bc.add_argument("--text", default=None, help="a text file (one text a line) timed at its real token lengths")
        bc.add_argument("--json", default=None, help="write the results (raw ms, environment) to this JSON file")
        bc.add_argument("--markdown", default=None, help="write the results as Markdown to this file")
        bc.add_argument("--plots", default=None, help="write latency plots into this folder (needs the plots extra)")
        if name == "check":
            bc.add_argument("--baseline", default=None, help="an earlier bench JSON of the same model and shapes: "
                            "fail on a slowdown beyond the profile's [baseline] allowance")
            bc.add_argument("--results", default=None, help="judge this bench JSON instead of measuring")
            bc.add_argument("--junit", default=None, help="write one JUnit testcase per check to this XML file")
    return parser


def _check_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="then start a real server on it (localhost), check the golden texts over HTTP and gRPC "
                             "against the golden outputs, and time it (needs the serve extra)")
    parser.add_argument("--server-python", default=None, help="--check: the Python whose environment runs the server "
                        "and its Python backend (default: $BERTSHIP_SERVE_PYTHON, else this one where it can, else "
                        "bertship's own, made once under ~/.cache/bertship; docs/serving.md)")
    parser.add_argument("--clients", type=int, default=8,
                        help="--check: concurrent clients timed (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=200, help="--check: requests timed (default: %(default)s)")


def _cmd_export(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise BackendMissingError("export needs torch and transformers — pip install 'bertship[export]'")
    from bertship.exporter import export

    from bertship.exporter.options import ExportOptions

    options = ExportOptions(
        task=args.task, backends=args.backends, recipe=args.recipe, calibration=args.calibration,
        calibration_method=args.calibration_method, ort_graph=args.ort_graph,
        max_accuracy_drop=args.max_accuracy_drop, eval_data=args.eval_data, profile=args.profile,
        exit_calibration=args.exit_calibration,
        min_cosine=args.min_cosine, min_rank_agreement=args.min_rank_agreement, allow_batch_dependence=args.allow_batch_dependence,
        compact=args.compact, external_data=args.external_data, no_memory_check=args.no_memory_check,
        allow_missing_fusions=args.allow_missing_fusions, force=args.force, allow_pickle=args.allow_pickle,
        max_length=args.max_length, pooling=args.pooling, normalize=args.normalize, threads=args.threads,
        target_cpu=args.target_cpu,
    )
    export(args.model, out=args.out, options=options)
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise BackendMissingError("analyze needs torch and transformers — pip install 'bertship[export]'")
    from pathlib import Path

    from bertship.exporter.load import default_model_path
    from bertship.exporter.sparsity import analyze, load_model, plot
    from bertship.runtimes.errors import UsageError

    if args.seq_len < 1:
        raise UsageError(f"--seq-len {args.seq_len} is not a length — give a positive number of tokens, e.g. 128")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise BackendMissingError("--plot needs matplotlib — pip install 'bertship[plots]'")
    report = analyze(load_model(args.model or default_model_path()), seq_len=args.seq_len)
    print(report.table())
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(report.as_dict(), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json_file}")
    if args.plot:
        print(f"wrote {plot(report, args.plot)}")
    folder = Path(args.model or default_model_path())
    if (folder / "tokens.json").is_file():  # a `bertship tokens` folder: the tokens each layer runs on
        from bertship.exporter import tokens

        spec = json.loads((folder / "tokens.json").read_text(encoding="utf-8"))
        print(tokens.summary(spec))
        if args.plot:
            target = Path(args.plot)
            print(f"wrote {tokens.plot(spec, target.with_name(target.stem + '-tokens' + target.suffix))}")
    if (folder / "exits.json").is_file():  # a `bertship exits` folder: where its held-out texts left
        from bertship.exporter import exits

        spec = json.loads((folder / "exits.json").read_text(encoding="utf-8"))
        print(exits.summary(spec))
        if args.plot:
            target = Path(args.plot)
            print(f"wrote {exits.plot(spec, target.with_name(target.stem + '-exits' + target.suffix))}")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise BackendMissingError("prune needs torch and transformers — pip install 'bertship[export]'")
    from bertship.exporter.prune import prune

    record = prune(args.model, args.out, heads=args.heads, ffn=args.ffn, data=args.data, ranking=args.ranking,
                   recover_steps=args.recover_steps, batch_size=args.batch_size, max_length=args.max_length,
                   lr=args.lr, distill=args.distill, importance_rows=args.importance_rows, force=args.force, log=lambda m: print(m, file=sys.stderr))
    heads = sum(len(h) for h in record["heads_zeroed"].values())
    print(f"wrote {args.out}: {heads} head(s) and {sum(record['neurons_zeroed'].values())} FFN neuron(s) zeroed "
          f"({record['importance']}, {record['ranking']} ranking); `bertship export {args.out} --compact` removes them")
    return 0


def _cmd_exits(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise BackendMissingError("exits needs torch and transformers — pip install 'bertship[export]'")
    from bertship.exporter.exits import train_exits
    from bertship.runtimes.exits import describe

    spec = train_exits(args.model, args.data, args.out, eval_data=args.eval_data, layers=args.layers,
                       max_accuracy_drop=args.max_accuracy_drop, pooling=args.pooling, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, max_length=args.max_length, force=args.force,
                       log=lambda m: print(m, file=sys.stderr))
    cal = spec["calibration"]
    chosen = cal["measured"][spec["rule"]["kind"]]
    print(f"wrote {args.out}: off-ramps after layers {','.join(map(str, spec['layers']))}; {describe(spec['rule'])} "
          f"runs {chosen['mean_layers']:.2f} of {cal['layers']} layers on average on --eval-data, accuracy "
          f"{chosen['accuracy']:.4f} (full model {cal['full_accuracy']:.4f}); `bertship export {args.out} --eval-data "
          "TEST` builds its segments")
    return 0


def _cmd_tokens(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise BackendMissingError("tokens needs torch and transformers — pip install 'bertship[export]'")
    from bertship.exporter.tokens import search_tokens

    spec = search_tokens(args.model, args.out, eval_data=args.eval_data, data=args.data, task=args.task,
                         schedule=args.schedule, max_accuracy_drop=args.max_accuracy_drop, min_cosine=args.min_cosine,
                         recover_steps=args.recover_steps, lr=args.lr, batch_size=args.batch_size,
                         max_length=args.max_length, force=args.force, log=lambda m: print(m, file=sys.stderr))
    r = spec["result"]
    what = (f"accuracy {r['accuracy']:.4f} (full {spec['judged_on']['full_model']['accuracy']:.4f})"
            if "accuracy" in r else f"cosine min {r['cosine_min']:.4f}")
    print(f"wrote {args.out}: keeps {', '.join(f'{x:g}' for x in spec['schedule'])} of the tokens after layers "
          f"1-{len(spec['schedule'])}, {r['cost']:.2f} of the layer work, {what} on --eval-data; `bertship export "
          f"{args.out}` builds it")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from bertship.runtimes import load
    from bertship.runtimes.evaluate import evaluate, read_eval_data

    model = load(args.artifact, backend=args.backend, threads=args.threads)
    reference = load(args.reference, threads=args.threads) if args.reference else None
    data = read_eval_data(args.data, model.task, model.manifest["task"].get("id2label"))
    result = evaluate(model, data, reference, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        parts = [f"{k} {result[k]:.4f}" for k in ("accuracy", "cosine_mean", "cosine_min", "argmax_agreement") if k in result]
        print(f"{args.artifact} ({result['recipe']}, {result['backend']}) on {result['n']} rows of {result['data']}: "
              + ", ".join(parts))
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from bertship.exporter.recipes import AUTO_SUMMARY, RECIPES, on_class
    from bertship.profiles import cpu_info
    from bertship.runtimes import cpuclass

    flags = set(cpu_info()["flags"])
    cls = cpuclass.flags_class()
    print(f"This CPU: {cpu_info()['model']}, class {cpuclass.describe(cls)}\n")
    for r in RECIPES.values():
        here = "" if not r.isa_any or flags & set(r.isa_any) else f"  [not on this machine: needs {' or '.join(r.isa_any)}]"
        print(f"{r.name}{here}\n  {r.summary}")
        for backend, how in r.how.items():
            print(f"  {backend}: {how}")
            print(f"    on this {cls} CPU: {on_class(r.name, backend, cls)}")
        for backend, why in r.refused.items():
            print(f"  {backend}: refused — {why}")
        if r.needs_calibration:
            print("  needs calibration text (--calibration FILE, default: 64 bundled sentences)")
        if r.params:
            print("  parameters: " + ", ".join(f"{k}={v}" for k, v in r.params.items()))
        tol = r.tolerance
        if tol is not None:
            print(f"  export gate vs PyTorch fp32: per-sample cosine >= {tol.min_cosine}, "
                  f"argmax agreement >= {tol.min_argmax_agreement}")
        print()
    print(f"auto\n  {AUTO_SUMMARY}\n")
    print("Every embedding artifact must also give a text the same vector alone and among other texts (cosine >= "
          "0.999; --allow-batch-dependence accepts less).")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from bertship.runtimes import backends, verify

    names = list(backends.parse_backends(args.backends)) if args.backends else None
    report = verify(args.artifact, backends=names, threads=args.threads)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, rep in report.items():
            worst = max(o["max_abs_diff"] for o in rep["outputs"])
            cos = min(o["cosine_min"] for o in rep["outputs"])
            print(f"{name:<12} ok  on {rep['cpu_class']}  precision {rep['precision']:<5} max|diff| {worst:.2e}  min cosine {cos:.7f}  "
                  f"per-text tail: min {rep['tail']['cosine_min']:.6f} p1 {rep['tail']['cosine_p1']:.6f}  "
                  f"alone vs batched: min {rep['batch_invariance']['cosine_min']:.6f}"
                  + (f"  lengths: min {rep['length_sweep']['cosine_min']:.6f}" if "length_sweep" in rep else "")
                  + _ranking_text(rep))
        print(f"verified {args.artifact}: checksums, tokenizer and {len(report)} backend(s) match the golden outputs")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bertship.runtimes import artifact
    from bertship.runtimes.inspect import describe

    manifest = artifact.read_manifest(args.artifact)
    print(json.dumps(manifest, indent=2) if args.json else describe(manifest, Path(args.artifact)))
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from bertship.runtimes import deploy

    if args.check and (args.clients < 1 or args.requests < 1):
        from bertship.runtimes.errors import UsageError

        raise UsageError(f"--clients {args.clients} / --requests {args.requests} — pass positive numbers")
    if args.target == "triton":
        record = deploy.triton(args.artifact, args.out, backend=args.backend, max_batch=args.max_batch,
                               instances=args.instances, threads=args.threads, name=args.name, pairs=args.pairs,
                               runtime=args.runtime, truncation=args.truncation, bucket_size=args.bucket_size,
                               queue_delay_us=args.queue_delay_us, tune_batching=args.tune_batching, force=args.force)
    else:
        record = deploy.ovms(args.artifact, args.out, threads=args.threads, name=args.name, force=args.force)
    for note in record["notes"]:
        print(f"bertship: note: {note}", file=sys.stderr)
    print(f"wrote {record['out']}: {record['target']} layout with model(s) {', '.join(record['models'])} "
          f"({record['backend']}, {record['task']})")
    if args.check:
        _check_deployment(args, record)
    return 0


def _check_deployment(args: argparse.Namespace, record: dict) -> None:
    from bertship.runtimes import serve_check

    if record["target"] == "ovms":
        serve_check.check_ovms(args.artifact, args.out)
    report = serve_check.check_triton(args.artifact, args.out, server_python=args.server_python,
                                      clients=args.clients, requests=args.requests,
                                      log=lambda m: print(f"[bertship] check    {m}", file=sys.stderr))
    for where, rep in report["fidelity"].items():
        if "cosine_min" in rep:
            detail = f"min cosine {rep['cosine_min']:.6f}"
        elif "ranking" in rep:
            top1 = rep["ranking"]["top1_agreement"]
            detail = f"top-1 agreement {'—' if top1 is None else format(top1, '.3f')}"
        else:
            detail = f"agreement {rep.get('answer_agreement', rep.get('words_agree')):.3f}"
        print(f"{where:<14} ok  {rep['output']} max|diff| {rep['max_abs_diff']:.2e}  {detail}")
    load = report["load"]
    print(f"served {report['texts']} golden texts over HTTP and gRPC within the artifact's limits; "
          f"{load['requests']} requests from {load['clients']} clients: p50 {load['latency_ms_p50']:.1f} ms, "
          f"p99 {load['latency_ms_p99']:.1f} ms, {load['throughput_rps']:.1f} requests/s ({report['server']}; CPU class "
          f"{report['cpu_class']})")


def _cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bertship.runtimes import server
    from bertship.runtimes.service import Limits

    limits = Limits()
    for key, value in (("max_batch_tokens", args.max_batch_tokens), ("max_queue_tokens", args.max_queue_tokens)):
        if value is not None:
            if value < 1:
                raise UsageError(f"--{key.replace('_', '-')} must be a positive integer, got {value}")
            limits = replace(limits, **{key: value})
    server.run(args.artifact, host=args.host, port=args.port, replicas=args.replicas, threads=args.threads,
               backend=args.backend, address=args.address, name=args.name, limits=limits, truncation=args.truncation,
               log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


def _cmd_profiles(args: argparse.Namespace) -> int:
    from bertship.bench import commands

    return commands.profiles(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from bertship.bench import commands

    return commands.bench(args)


def _cmd_check(args: argparse.Namespace) -> int:
    from bertship.bench import commands

    return commands.check(args)

COMMANDS = {"export": _cmd_export, "verify": _cmd_verify, "inspect": _cmd_inspect, "recipes": _cmd_recipes, "eval": _cmd_eval,
            "deploy": _cmd_deploy, "serve": _cmd_serve, "analyze": _cmd_analyze, "prune": _cmd_prune,
            "exits": _cmd_exits, "tokens": _cmd_tokens,
            "profiles": _cmd_profiles, "bench": _cmd_bench, "check": _cmd_check}


def _ranking_text(rep: dict) -> str:
    """verify's words on a retrieval artifact's own checks (runtimes.retrieval), or nothing."""
    if "ranking" not in rep:
        return ""
    r = rep["ranking"]
    text = f"  ranking: top-1 {'—' if r['top1_agreement'] is None else format(r['top1_agreement'], '.3f')} " \
           f"tau min {r['kendall_tau_min']:.3f}"
    if rep.get("top_terms"):
        text += f"  top-10 terms kept: min {rep['top_terms']['overlap_min']:.2f}"
    if rep.get("token_cosine"):
        text += f"  token cosine: min {rep['token_cosine']['cosine_min']:.6f}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run one bertship command; return its exit code (documented in --help and README)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage and 0 on --help
        return int(exc.code or 0)
    try:
        return COMMANDS[args.command](args)
    except BertshipError as exc:
        print(f"bertship: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bertship: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as exc:  # a bug: say so, keep exit code 1 distinct from the documented ones
        if args.debug:
            raise
        print(f"bertship: internal error: {type(exc).__name__}: {exc} — re-run with --debug and report it",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
