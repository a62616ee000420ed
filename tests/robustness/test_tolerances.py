import math

import pytest
import torch

from robustness.tolerances import SAFETY_FACTOR, gradient_tolerance, mismatch, tolerance


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_tolerance_is_derived_from_eps_and_reduction_size(dtype):
    eps = torch.finfo(dtype).eps
    one = tolerance(dtype)
    hundred = tolerance(dtype, n=100)
    assert one.rtol == pytest.approx(SAFETY_FACTOR * eps)
    assert hundred.rtol == pytest.approx(10 * one.rtol)
    assert tolerance(dtype, scale=1e3).atol == pytest.approx(1e3 * one.rtol)


def test_half_precision_is_looser_than_float32_which_is_looser_than_float64():
    assert (
        tolerance(torch.float64).rtol
        < tolerance(torch.float32).rtol
        < tolerance(torch.float16).rtol
        < tolerance(torch.bfloat16).rtol
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"dtype": torch.int64}, "floating dtype", id="integer-dtype"),
        pytest.param({"dtype": torch.float32, "n": 0}, "n >= 1", id="empty-reduction"),
        pytest.param({"dtype": torch.float32, "scale": -1.0}, "scale >= 0", id="negative-scale"),
        pytest.param({"dtype": torch.float32, "scale": math.inf}, "finite", id="inf-scale"),
    ],
)
def test_tolerance_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tolerance(**kwargs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_gradient_tolerance_grows_with_fan_in_not_with_the_reduction(dtype):
    # One gradient entry of a mean over N terms is w / N * f'(x_i): no sum over N, so only the
    # entry's own backward (fan_in, e.g. V logits) enters, with the same formula.
    eps = torch.finfo(dtype).eps
    assert gradient_tolerance(dtype).rtol == pytest.approx(SAFETY_FACTOR * eps)
    assert gradient_tolerance(dtype, fan_in=4) == tolerance(dtype, n=4, scale=0.0)
    assert gradient_tolerance(dtype, fan_in=4, scale=0.5).atol == pytest.approx(
        0.5 * 2 * SAFETY_FACTOR * eps
    )


def test_gradient_tolerance_rejects_an_empty_fan_in():
    with pytest.raises(ValueError, match="fan_in >= 1"):
        gradient_tolerance(torch.float32, fan_in=0)


def _assert_close_message(actual, expected, tol, *, equal_nan=False):
    try:
        torch.testing.assert_close(
            actual, expected, rtol=tol.rtol, atol=tol.atol, equal_nan=equal_nan
        )
    except AssertionError as exc:
        return str(exc)
    return None


_NAN = float("nan")


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        (torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 2.0 + 1e-14])),
        (torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 2.1])),
        (torch.tensor(3.0, dtype=torch.float64), torch.tensor(3.0 + 1e-3)),
        (torch.tensor([_NAN, 1.0], dtype=torch.float64), torch.tensor([_NAN, 1.0])),
        (torch.tensor([math.inf], dtype=torch.float64), torch.tensor([math.inf])),
        (torch.tensor([math.inf], dtype=torch.float64), torch.tensor([-math.inf])),
        (torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, 3)),
        (torch.ones(2, 3, dtype=torch.float64), torch.ones(3, 2)),  # shape mismatch
        (torch.ones(2, dtype=torch.float32), torch.ones(2)),  # dtype mismatch
        (torch.ones(4, dtype=torch.float64)[::2], torch.ones(2)),  # another stride
    ],
)
@pytest.mark.parametrize("equal_nan", [False, True])
def test_mismatch_gives_assert_close_s_verdict_and_message(actual, expected, equal_nan):
    expected = expected.to(torch.float64)
    tol = tolerance(torch.float64)
    assert mismatch(actual, expected, tol, equal_nan=equal_nan) == _assert_close_message(
        actual, expected, tol, equal_nan=equal_nan
    )
