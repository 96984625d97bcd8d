"""Early exit at run time (torch-free): the exit rules, and the runner that chains an artifact's segments, dropping
the texts that left at an off-ramp from the batch before the next segment.

An early-exit artifact holds, per backend, one graph per segment (exporter.segments): segment k runs the layers after
off-ramp k-1 up to off-ramp k and outputs that off-ramp's logits and the hidden states the next segment starts from;
the last segment ends with the model's own classifier. ONNX Runtime cannot leave one session half-way (microsoft/
onnxruntime #4484) and an ONNX If exits a whole batch or none of it, so the chain is run here: after each segment the
rule decides per text, and only the texts still running go on, cut to the longest of them. Under a token schedule
(exporter.tokens) a segment also hands on the mask of the tokens kept (`mask_out` → the next one's `mask_in`), and
that state is cut to the most tokens any running text kept.

Rules (exporter.exits calibrates one on labelled held-out text):
    {"kind": "entropy", "threshold": t}   leave when softmax entropy / log(labels) < t (DeeBERT)
    {"kind": "patience", "patience": p}   leave when p consecutive off-ramps repeat the one before (PABEE)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import UsageError

KINDS = ("entropy", "patience")


def check_rule(rule: Any) -> dict[str, Any]:
    """A valid rule dict, or UsageError saying what a rule looks like."""
    shape = 'a rule is {"kind": "entropy", "threshold": 0.1} or {"kind": "patience", "patience": 2}'
    if not isinstance(rule, dict) or rule.get("kind") not in KINDS:
        raise UsageError(f"unknown exit rule {rule!r} — {shape}")
    if rule["kind"] == "entropy":
        t = rule.get("threshold")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise UsageError(f"entropy threshold {t!r} must be a number in [0, 1] (0: no text exits) — {shape}")
    else:
        p = rule.get("patience")
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise UsageError(f"patience {p!r} must be a whole number of at least 1 — {shape}")
    return rule


def describe(rule: dict[str, Any]) -> str:
    if rule["kind"] == "entropy":
        return f"entropy < {rule['threshold']:.4g}"
    return f"patience {rule['patience']}"


def normalized_entropy(logits: np.ndarray) -> np.ndarray:
    """Softmax entropy over the last axis divided by log(labels): 0 for a certain prediction, 1 for a uniform one."""
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    h = -(p * np.log(np.clip(p, 1e-30, None))).sum(-1)
    return h / np.log(logits.shape[-1])


class Decider:
    """Per-text exit decisions along the off-ramps of one batch. `step` takes an off-ramp's logits for the texts still
    running and says which leave; `keep` narrows the state to the texts that go on."""

    def __init__(self, rule: dict[str, Any], rows: int):
        self.rule = check_rule(rule)
        self.previous = np.full(rows, -1, dtype=np.int64)
        self.count = np.zeros(rows, dtype=np.int64)

    def step(self, logits: np.ndarray) -> np.ndarray:
        if self.rule["kind"] == "entropy":
            return normalized_entropy(logits) < self.rule["threshold"]
        pred = logits.argmax(-1)
        same = pred == self.previous
        self.count = np.where(same, self.count + 1, 0)
        self.previous = pred
        return self.count >= self.rule["patience"]

    def keep(self, rows: np.ndarray) -> None:
        self.previous, self.count = self.previous[rows], self.count[rows]


def apply_offline(rule: dict[str, Any], ramp_logits: np.ndarray, final_logits: np.ndarray, layers: Sequence[int],
                  total: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule on logits already computed for every off-ramp ([ramps, N, labels]): per text, its prediction and the
    layer it left after (total: it ran every layer). What the runtime chain does, without running anything."""
    n = final_logits.shape[0]
    pred, layer = final_logits.argmax(-1).copy(), np.full(n, total, dtype=np.int64)
    decider = Decider(rule, n)
    running = np.ones(n, dtype=bool)
    for r, at in enumerate(layers):
        leave = decider.step(ramp_logits[r]) & running
        pred[leave] = ramp_logits[r][leave].argmax(-1)
        layer[leave] = at
        running &= ~leave
    return pred, layer


class SegmentRunner:
    """An early-exit artifact's segments on one backend, as one Runner: `run` chains every segment (all outputs: the
    final logits and each off-ramp's), `run_exits` leaves per text as the rule says."""

    def __init__(self, runners: list[Any], segments: list[dict[str, Any]], total_layers: int,
                 rule: dict[str, Any] | None = None):
        if len(runners) != len(segments) or len(runners) < 2:
            raise UsageError("an early-exit backend needs one runner per segment, at least two")
        self.rule = check_rule(rule) if rule is not None else None  # this backend's own calibrated rule, if any
        self.runners = runners
        self.segments = segments
        self.total_layers = total_layers
        first = runners[0]
        self.backend = first.backend
        self.precision = first.precision
        self.input_names = tuple(first.input_names)
        self.output_names = tuple(s["logits"] for s in segments[-1:]) + tuple(s["logits"] for s in segments[:-1])

    def _inputs(self, k: int, feeds: dict[str, np.ndarray], state: dict[str, np.ndarray],
                rows: np.ndarray | None) -> dict[str, np.ndarray]:
        """Segment k's feeds: the texts' own inputs, cut to the longest text still running (the last column any of
        them uses), and the state the segment before handed over, cut likewise — by the mask of the tokens kept
        there when a token schedule runs with the exits, else as the inputs."""
        seg, runner = self.segments[k], self.runners[k]
        mask = feeds["attention_mask"] if rows is None else feeds["attention_mask"][rows]
        width = _width(mask)
        state_width = _width(state[seg["mask_in"]]) if seg.get("mask_in") else width
        out = {}
        for name in runner.input_names:
            if name in state:
                out[name] = np.ascontiguousarray(state[name][:, :state_width])
            else:
                value = feeds[name] if rows is None else feeds[name][rows]
                out[name] = np.ascontiguousarray(value[:, :width])
        return out

    @staticmethod
    def _handed(seg: dict[str, Any], out: dict[str, np.ndarray], keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The state segment `seg` hands to the next (its hidden states, and a token schedule's mask: the next
        segment's inputs of the same names), rows `keep` of it."""
        names = [seg[key] for key in ("hidden_out", "mask_out") if seg.get(key)]
        return {name: out[name] if keep is None else out[name][keep] for name in names}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results: dict[str, np.ndarray] = {}
        state: dict[str, np.ndarray] = {}
        for k, seg in enumerate(self.segments):
            out = self.runners[k].run(self._inputs(k, feeds, state, None))
            results[seg["logits"]] = out[seg["logits"]]
            state = self._handed(seg, out)
        return {name: results[name] for name in self.output_names}

    def run_exits(self, feeds: dict[str, np.ndarray], rule: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(logits [batch, labels], exit layer [batch]): each text's logits at the off-ramp it left by (or the model's
        own classifier's, exit layer = the layer count)."""
        rows_total = feeds["attention_mask"].shape[0]
        decider = Decider(rule, rows_total)
        logits: np.ndarray | None = None
        layer = np.full(rows_total, self.total_layers, dtype=np.int64)
        rows = np.arange(rows_total)
        state: dict[str, np.ndarray] = {}
        for k, seg in enumerate(self.segments):
            out = self.runners[k].run(self._inputs(k, feeds, state, rows if len(rows) < rows_total else None))
            here = out[seg["logits"]]
            if logits is None:
                logits = np.zeros((rows_total, here.shape[-1]), dtype=np.float32)
            if k == len(self.segments) - 1:
                logits[rows] = here
                break
            leave = decider.step(here)
            logits[rows[leave]] = here[leave]
            layer[rows[leave]] = seg["layer"]
            stay = np.flatnonzero(~leave)
            if stay.size == 0:
                break
            decider.keep(stay)
            rows = rows[stay]
            state = self._handed(seg, out, stay)
        return logits, layer


def _width(mask: np.ndarray) -> int:
    """One past the last column any row of `mask` uses (its full width when none does)."""
    used = np.flatnonzero(mask.any(0))
    return int(used[-1]) + 1 if used.size else mask.shape[1]
