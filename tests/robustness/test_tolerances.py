import math

import pytest
import torch

from robustness.tolerances import SAFETY_FACTOR, tolerance


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
