"""edifice.testing.tol: the contract's tolerances and comparisons that report the worst element and where."""

from __future__ import annotations

import math

import pytest
import torch

from edifice.testing import tol


def test_tolerances_are_the_documented_values() -> None:
    assert (tol.FP32.atol, tol.FP32.rtol) == (1e-5, 1e-5)
    assert (tol.SCAN.atol, tol.SCAN.rtol) == (1e-4, 1e-4)
    assert tol.BF16_REL_L2 == 2e-2
    assert tol.tolerance_for(torch.float32) == tol.FP32
    assert tol.tolerance_for(torch.bfloat16).atol == 1e-2
    assert tol.tolerance_for(torch.float64).atol < 1e-9
    assert str(tol.FP32) == "atol=1e-05, rtol=1e-05"


def test_compare_within_tolerance_is_none() -> None:
    expected = torch.tensor([1.0, -2.0, 1000.0])
    # |d| <= atol + rtol * |expected|: 1000 * 1e-5 + 1e-5 allows 0.01 at the last element.
    actual = expected + torch.tensor([5e-6, -5e-6, 0.009])
    assert tol.compare(actual, expected, tol.FP32) is None


def test_compare_reports_the_worst_element_its_index_and_count() -> None:
    expected = torch.zeros(2, 3, 4)
    actual = expected.clone()
    actual[1, 2, 3] = 0.5
    actual[0, 1, 0] = 0.25
    mismatch = tol.compare(actual, expected, tol.FP32)
    assert mismatch is not None
    assert mismatch.index == (1, 2, 3)
    assert mismatch.max_abs == pytest.approx(0.5)
    assert mismatch.actual == pytest.approx(0.5)
    assert mismatch.expected == 0.0
    assert (mismatch.n_bad, mismatch.numel) == (2, 24)
    text = str(mismatch)
    assert "max abs error 0.5 at (1, 2, 3)" in text
    assert "2 of 24 elements outside atol=1e-05, rtol=1e-05" in text


def test_nan_is_always_the_worst_and_never_matches() -> None:
    expected = torch.tensor([0.0, 1.0, math.nan])
    actual = torch.tensor([3.0, math.nan, math.nan])
    mismatch = tol.compare(actual, expected)
    assert mismatch is not None
    assert mismatch.n_bad == 3
    assert mismatch.max_abs == math.inf
    assert mismatch.index in ((1,), (2,))


def test_infinities_match_only_themselves() -> None:
    inf = torch.tensor([math.inf, -math.inf])
    assert tol.compare(inf, inf.clone()) is None
    mismatch = tol.compare(inf, -inf)
    assert mismatch is not None
    assert mismatch.n_bad == 2


def test_scalars_and_shape_mismatches() -> None:
    mismatch = tol.compare(torch.tensor(1.0), torch.tensor(2.0))
    assert mismatch is not None
    assert mismatch.index == ()
    with pytest.raises(ValueError, match=r"got \[2\], expected \[3\]"):
        tol.compare(torch.zeros(2), torch.zeros(3))


def test_assert_close_names_the_tensor() -> None:
    tol.assert_close(torch.ones(3), torch.ones(3) + 1e-6, name="logits")
    with pytest.raises(AssertionError, match=r"^logits: max abs error 0\.1 at \(2,\)"):
        tol.assert_close(torch.tensor([0.0, 0.0, 0.1]), torch.zeros(3), name="logits")
    with pytest.raises(AssertionError, match=r"^h: shape mismatch"):
        tol.assert_close(torch.zeros(2), torch.zeros(3), name="h")


def test_relative_l2_matches_its_definition() -> None:
    expected = torch.tensor([3.0, 4.0])  # norm 5
    actual = torch.tensor([3.0, 4.1])  # error norm 0.1
    assert tol.relative_l2(actual, expected) == pytest.approx(0.1 / 5.0)
    assert tol.relative_l2(torch.zeros(2), torch.zeros(2)) == 0.0
    assert tol.relative_l2(torch.ones(2), torch.zeros(2)) == math.inf
    with pytest.raises(ValueError, match="shape mismatch"):
        tol.relative_l2(torch.zeros(1), torch.zeros(2))


def test_assert_relative_l2_uses_the_bf16_limit_and_reports_the_worst_element() -> None:
    expected = torch.tensor([3.0, 4.0])
    tol.assert_relative_l2(torch.tensor([3.0, 4.05]), expected)  # 0.01 <= 0.02
    with pytest.raises(
        AssertionError, match=r"^y: relative L2 error 0\.04 exceeds 0\.02; max abs error 0\.2 at \(1,\)"
    ):
        tol.assert_relative_l2(torch.tensor([3.0, 4.2]), expected, name="y")
    with pytest.raises(AssertionError, match="relative L2 error nan"):
        tol.assert_relative_l2(torch.tensor([math.nan, 4.0]), expected)
    with pytest.raises(AssertionError, match="shape mismatch"):
        tol.assert_relative_l2(torch.zeros(1), expected)


def test_first_nonfinite_and_assert_finite() -> None:
    t = torch.zeros(2, 3)
    assert tol.first_nonfinite(t) is None
    assert tol.first_nonfinite(torch.zeros(2, dtype=torch.int64)) is None
    t[1, 0], t[1, 2] = math.inf, math.nan
    assert tol.first_nonfinite(t) == (2, (1, 0))
    with pytest.raises(AssertionError, match=r"^out: 2 of 6 values are not finite \(first at \(1, 0\): inf\)"):
        tol.assert_finite(t, name="out")
    with pytest.raises(AssertionError, match=r"first at \(\): nan"):
        tol.assert_finite(torch.tensor(math.nan))


def test_exact_fp32_turns_tf32_off_and_restores_it() -> None:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with tol.exact_fp32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
