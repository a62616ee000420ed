"""No vacuous verdicts: a row that checked nothing is never `pass`, nor is a gate that did."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from robustness.gate import EXIT_NOTHING_CHECKED, TestOutcome, _rows, _skip_footer, build_parser

needs_no_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks what the gate says on a machine without cuda"
)


def _outcome(
    outcome="passed", *, term="count_loss", device="cpu", examples=0, hypothesis=True, reason=""
):
    return TestOutcome(
        nodeid=f"t[{device}-{term}]",
        rule="C-X-1",
        term=term,
        device=device,
        outcome=outcome,
        reason=reason,
        examples=examples,
        hypothesis=hypothesis,
    )


def test_a_row_that_ran_no_example_is_skipped_not_passed():
    (row,) = _rows([_outcome(examples=0)])
    assert row.status == "skipped"
    assert row.skipped == ["no examples ran"]


def test_a_plain_test_that_passed_counts_one_example():
    (row,) = _rows([_outcome(hypothesis=False)])
    assert (row.status, row.examples) == ("pass", 1)


def test_a_row_whose_tests_were_all_skipped_is_skipped():
    (row,) = _rows([_outcome("skipped", reason="cuda not available")])
    assert row.status == "skipped"
    assert row.skipped == ["cpu: cuda not available"]


def test_each_skip_reason_is_said_once_in_the_footer():
    rows = _rows(
        [_outcome(term=term, examples=10) for term in ("count_loss", "nuc_loss")]
        + [
            _outcome("skipped", term=term, device="cuda", reason="no GPU")
            for term in ("count_loss", "nuc_loss")
        ]
    )
    assert [r.status for r in rows] == ["pass", "pass"]
    assert _skip_footer(rows) == ["skipped in 2 rows: cuda: no GPU"]


def test_help_documents_every_exit_status():
    text = build_parser().format_help()
    for status in range(EXIT_NOTHING_CHECKED + 1):
        assert f"\n  {status}  " in text
    assert "nothing was checked" in text


@needs_no_cuda
@pytest.mark.parametrize(
    "args",
    [("--device", "cuda", "--rules", "C-SCALAR-1"), ("--device", "cpu", "--rules", "C-DEVICE-1")],
    ids=["cuda-without-a-gpu", "device-rule-on-cpu"],
)
def test_a_gate_that_checked_nothing_exits_4_with_one_line(tmp_path, args):
    done = subprocess.run(
        [sys.executable, "-m", "robustness", "gate", "--workers", "0", "--profile", "dev", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == EXIT_NOTHING_CHECKED, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("robustness gate: nothing was checked: all 5 selected")
    assert done.stdout == ""
