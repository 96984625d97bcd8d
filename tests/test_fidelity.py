"""The comparison behind the export gate and `verify`, on small hand-made arrays."""

from __future__ import annotations

import numpy as np

from bertship.runtimes.fidelity import Tolerance, compare

TOL = Tolerance(max_abs_diff=1e-4, min_cosine=0.9999, argmax_margin=1e-3)
SEQ = ["batch", "sequence", "hidden"]


def test_padding_positions_are_ignored():
    ref = np.ones((2, 4, 3), np.float32)
    got = ref.copy()
    got[1, 2:] = 1000.0  # garbage where sample 1 is padding
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    check = compare("h", SEQ, None, [ref], [got], [mask], TOL)
    assert check.failures == () and check.max_abs_diff == 0.0


def test_a_real_difference_fails_with_its_number():
    ref = np.ones((2, 4, 3), np.float32)
    got = ref.copy()
    got[0, 1, 2] += 0.5
    check = compare("h", SEQ, None, [ref], [got], [np.ones((2, 4))], TOL)
    assert check.max_abs_diff == 0.5
    assert any("max|diff| 0.5" in f for f in check.failures)


def test_cosine_catches_a_scaled_direction_change():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    got = np.array([[1.0, 0.0], [0.0, -1.0]], np.float32)
    check = compare("e", ["batch", "hidden"], None, [ref], [got], [np.ones((2, 3))], Tolerance(10.0, 0.9999))
    assert check.cosine_min == -1.0
    assert any("cosine" in f for f in check.failures)


def test_argmax_judged_only_on_decisive_positions():
    ref = np.array([[0.0, 5.0, 1.0], [1.0, 1.0 + 1e-6, 0.0]], np.float32)  # row 1 is a near-tie
    got = np.array([[0.0, 5.0, 1.0], [1.0 + 2e-6, 1.0, 0.0]], np.float32)  # flips the near-tie only
    check = compare("logits", ["batch", "labels"], "labels", [ref], [got], [np.ones((2, 2))], TOL)
    assert check.decisive == 1 and check.argmax_agreement == 1.0 and check.failures == ()
    got[0] = [0.0, 0.0, 5.0]
    check = compare("logits", ["batch", "labels"], "labels", [ref], [got], [np.ones((2, 2))], Tolerance(0.1, -1.0, argmax_margin=1.0))
    assert check.argmax_agreement == 0.0
    assert any("argmax agreement" in f for f in check.failures)


def test_span_argmax_ignores_padding():
    ref = np.array([[0.0, 3.0, 0.0, 0.0]], np.float32)
    got = np.array([[0.0, 3.0, 0.0, 9.0]], np.float32)  # the max sits on a padding position
    mask = np.array([[1, 1, 1, 0]])
    check = compare("start_logits", ["batch", "sequence"], "sequence", [ref], [got], [mask], TOL)
    assert check.argmax_agreement == 1.0 and check.failures == ()


def test_shape_mismatch_and_nan_fail():
    ref = np.ones((2, 3), np.float32)
    assert compare("x", ["batch", "labels"], None, [ref], [np.ones((2, 4))], [np.ones((2, 1))], TOL).failures
    bad = ref.copy()
    bad[0, 0] = np.nan
    assert any("non-finite" in f for f in compare("x", ["batch", "labels"], None, [ref], [bad], [np.ones((2, 1))], TOL).failures)
