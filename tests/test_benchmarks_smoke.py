"""Smoke test of the benchmark suite: every code path on tiny sizes, one repeat.

No timing is asserted (timings depend on the machine); what is checked is that every section
runs, the JSON has the keys the README and the report rely on, and the baselines compute the
same numbers as ``aam`` (otherwise the ratios would compare different work).
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import run as bench_run
from benchmarks._gate import _families, bench_gate, rule_family
from benchmarks._loss import TERMS
from benchmarks._metrics import METRIC_FAMILIES
from benchmarks._scaling import growth_exponent
from benchmarks._targets import TARGET_LIMITS
from benchmarks._timing import compare


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    code = bench_run.main(["--quick", "--repeats", "1", "--warmup", "0", "--output", str(out)])
    assert code == 0
    return out, json.loads(out.read_text())


def test_quick_run_writes_every_section_with_date_machine_and_settings(quick_results):
    _, data = quick_results
    assert {"date", "machine", "settings", "targets", "loss", "metrics", "scaling"} <= set(data)
    assert "issue13_targets" in data
    assert {"platform", "cpu_count", "torch", "torch_threads"} <= set(data["machine"])
    assert data["machine"]["torch_threads"] == data["settings"]["threads"] == 1
    assert data["settings"]["repeats"] == 1
    assert "gate" not in data  # opt-in only


def test_loss_section_times_aam_against_both_baselines_per_term(quick_results):
    _, data = quick_results
    loss = data["loss"]
    candidates = {"aam", "baseline_mul", "baseline_select"}
    assert set(loss["seconds"]) == candidates
    assert set(loss["ratios"]) == {"vs_baseline_mul", "vs_baseline_select", "vs_fastest_baseline"}
    assert set(loss["terms"]) == set(TERMS)
    for term in TERMS:
        assert set(loss["terms"][term]["seconds"]) == candidates
    assert 0.2 < loss["padding"]["nucleotide"] < 0.45


def test_loss_baselines_compute_the_same_values_as_aam(quick_results):
    _, data = quick_results
    # float32 sums over ~1e3 entries: a few ulps of relative difference, not a different loss.
    assert max(data["loss"]["rel_diff"].values()) < 1e-5


def test_targets_section_reports_every_issue13_target_at_one_and_two_threads(quick_results):
    _, data = quick_results
    targets = data["issue13_targets"]
    assert set(targets["by_threads"]) == {"1", "2"}
    assert set(targets["limits"]) == set(TARGET_LIMITS)
    for measured in targets["by_threads"].values():
        assert set(measured["ratios"]) >= set(TARGET_LIMITS)
        assert set(measured["met"]) == set(TARGET_LIMITS)
        # The compute floor is timed beside aam's nucleotide term, in the same rounds.
        assert {"aam", "baseline_select", "exp", "clone"} <= set(measured["seconds"]["nuc_loss"])
        for name, ratio in measured["ratios"].items():
            assert math.isfinite(ratio), name
            assert ratio > 0, name


def test_metrics_section_reports_rates_and_ratios_per_family(quick_results):
    _, data = quick_results
    assert set(data["metrics"]) == set(METRIC_FAMILIES)
    for family in METRIC_FAMILIES:
        m = data["metrics"][family]
        assert {"aam", "python_loop", "python_loop_item"} <= set(m["elements_per_s"])
        assert m["ratios"]["vs_python_loop"] > 0
        assert m["ratios"]["vs_python_loop_item"] > 0
        assert {"aam"} <= set(m["small_batch"]["us_per_update"])
        # The Python loops are faithful baselines: same metric values as aam.
        assert m["rel_diff"]["vs_python_loop"] < 1e-9
        assert m["rel_diff"]["vs_python_loop_item"] < 1e-9


def test_scaling_section_fits_an_exponent_per_curve(quick_results):
    out, data = quick_results
    scaling = data["scaling"]
    assert [c["dim"] for c in scaling["loss"]] == ["batch", "asvs", "length"]
    assert scaling["pairwise"]["term"] == "base_loss"
    assert [c["family"] for c in scaling["streaming"]] == list(METRIC_FAMILIES)
    for curve in [*scaling["loss"], scaling["pairwise"], *scaling["streaming"]]:
        assert len(curve["points"]) >= 3
        assert math.isfinite(curve["exponent"]["aam"])
    # The plot is drawn when matplotlib is installed, and skipped with a message otherwise.
    if data["settings"]["optional"]["matplotlib"]:
        assert (out.parent / "scaling.png").is_file()
    else:
        assert "plot" not in data


@pytest.mark.parametrize("exponent", [1.0, 2.0, 0.5])
def test_growth_exponent_recovers_a_power_law(exponent):
    sizes = [1, 2, 4, 8]
    assert growth_exponent(sizes, [3.0 * s**exponent for s in sizes]) == pytest.approx(exponent)


def test_compare_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        compare({"noop": lambda: None}, repeats=0, warmup=0)


def test_gate_rows_are_summed_into_rule_families():
    assert rule_family("C-MASK-2") == "C-MASK"
    assert rule_family("C-METRIC-REF-1") == "C-METRIC-REF"
    assert rule_family("selftest") == "selftest"
    rows = [
        {"rule": "C-MASK-1", "term": "count_loss", "tests": 2, "examples": 30, "seconds": 1.0},
        {"rule": "C-MASK-2", "term": "nuc_loss", "tests": 1, "examples": 10, "seconds": 1.0},
        {"rule": "C-PAD-1", "term": "nuc_loss", "tests": 1, "examples": 5, "seconds": 0.5},
    ]
    families = _families(rows)
    assert list(families) == ["C-MASK", "C-PAD"]  # slowest first
    assert families["C-MASK"]["examples"] == 40
    assert families["C-MASK"]["examples_per_s"] == pytest.approx(20.0)


def test_gate_that_cannot_run_is_skipped_with_its_reason():
    result = bench_gate(["dev"], workers=0, timeout_s=60, extra_args=["--target", "no_such:Loss"])
    assert result["dev"]["status"] == "skipped"
    assert "without a report" in result["dev"]["reason"]
