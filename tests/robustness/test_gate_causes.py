"""Root causes: one bug is one finding, whatever number of rows it fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from robustness.causes import group_causes, message_shape, render_causes

ROOT = Path(__file__).resolve().parents[2]
BROKEN_NUC = "tests.robustness.broken_nuc:MultiTaskLoss"


@dataclass
class Failure:
    rule: str
    term: str
    message: str


def _violation(rule: str, term: str, headline: str, **details: str) -> Failure:
    lines = [f"[{rule}] {term}: {headline}"]
    width = max((len(k) for k in details), default=0)
    lines += [f"  {label.ljust(width)}  {text}" for label, text in details.items()]
    return Failure(rule, term, "\n".join(lines))


NUC_RAISES = "ValueError: Invalid target values: ids must be in [0, 4), got -100 at (0, {i}, 3)"


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("got -100 at (0, 1, 3) (12 of 48)", "got # at (…) (# of #)"),
        ("shape [3, 4] vs [3, 4, 1]", "shape […] vs […]"),
        ("float32 tolerance 1e-05 for C-MASK-1", "float32 tolerance # for C-MASK-1"),
        ("object at 0x7f3a2b", "object at 0x#"),
        ("first line\nsecond line", "first line"),
    ],
    ids=["ids-and-positions", "shapes", "names-keep-digits", "addresses", "first-line"],
)
def test_message_shape_normalizes_numbers_shapes_and_addresses(text, shape):
    assert message_shape(text) == shape


def test_one_exception_on_many_rows_is_one_cause_named_after_its_term():
    failures = [
        _violation(rule, term, "raised on the batch", exception=NUC_RAISES.format(i=i))
        for i, (rule, term) in enumerate(
            [
                ("C-MASK-1", "nuc_loss"),
                ("C-MASK-1", "total_loss"),
                ("C-REF-1", "nuc_loss"),
                ("C-REF-1", "total_loss"),
            ]
        )
    ]
    (cause,) = group_causes(failures)
    assert cause.summary.startswith("nuc_loss raised ValueError('Invalid target values: ids")
    assert cause.rows == [(f.rule, f.term) for f in failures]
    assert cause.to_json()["rows"][1] == {"rule": "C-MASK-1", "term": "total_loss"}


def test_a_crash_outside_a_violation_groups_by_its_exception():
    failures = [
        Failure("C-X-1", "count_loss", "RuntimeError: worker 3 died"),
        Failure("C-X-2", "count_loss", "RuntimeError: worker 5 died"),
    ]
    (cause,) = group_causes(failures)
    assert cause.summary == "count_loss raised RuntimeError('worker # died')"


def test_the_same_property_on_different_terms_is_different_causes():
    failures = [
        _violation("C-MASK-1", "count_loss", "count_loss changed when padded positions held nan"),
        _violation("C-MASK-1", "nuc_loss", "nuc_loss changed when padded positions held nan"),
        _violation("C-MASK-2", "count_loss", "gradient at padding is 0.5, not 0"),
    ]
    causes = group_causes(failures)
    assert [c.rows for c in causes] == [
        [("C-MASK-1", "count_loss")],
        [("C-MASK-1", "nuc_loss")],
        [("C-MASK-2", "count_loss")],
    ]
    assert causes[2].summary == "C-MASK-2 count_loss: gradient at padding is #, not #"


def test_a_total_failing_the_way_one_term_does_joins_that_terms_cause():
    failures = [
        _violation("C-MASK-1", "count_loss", "count_loss changed when padded positions held nan"),
        _violation("C-MASK-1", "total_loss", "total_loss changed when padded positions held nan"),
        _violation("C-REF-1", "total_loss", "total_loss differs from the reference"),
    ]
    first, second = group_causes(failures)
    assert first.rows == [("C-MASK-1", "count_loss"), ("C-MASK-1", "total_loss")]
    assert first.summary == "C-MASK-1 count_loss: count_loss changed when padded positions held nan"
    assert second.rows == [("C-REF-1", "total_loss")]


def test_every_failing_row_is_in_exactly_one_cause_largest_first():
    failures = [
        _violation("C-A-1", "count_loss", "count_loss is not >= 0"),
        # A second failure of the same row, for another reason: the row keeps its first cause.
        _violation("C-A-1", "count_loss", "raised", exception="TypeError: bad"),
        _violation("C-B-1", "nuc_loss", "raised", exception="TypeError: bad"),
        _violation("C-C-1", "nuc_loss", "raised", exception="TypeError: bad"),
    ]
    causes = group_causes(failures)
    rows = [row for cause in causes for row in cause.rows]
    assert sorted(rows) == sorted({(f.rule, f.term) for f in failures})
    assert len(rows) == len(set(rows))
    assert [len(c.rows) for c in causes] == [2, 1]
    assert len(causes[1].failures) == 2  # both failures of C-A-1 stay with its cause


def test_render_says_how_many_rows_each_cause_explains():
    failures = [
        _violation(rule, "nuc_loss", "raised", exception="ValueError: bad id 7")
        for rule in ("C-MASK-1", "C-REF-1")
    ]
    text = render_causes(group_causes(failures), labels=["known"])
    assert text.splitlines() == [
        "1 cause explains 2 failing rows:",
        "  cause 1: 2 rows: nuc_loss raised ValueError('bad id #') [known]",
        "    C-MASK-1 nuc_loss, C-REF-1 nuc_loss",
    ]
    assert render_causes([]) == ""


def test_a_bug_confined_to_nuc_loss_fails_only_nuc_and_total_rows_as_one_cause(tmp_path):
    # Before per-term isolation this variant failed every term's rows (all heads went
    # through one forward), and before causes each row was its own finding.
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "robustness",
            "gate",
            "--target",
            BROKEN_NUC,
            "--rules",
            "C-SCALAR-1,C-MASK-1,C-INVARIANT-1",
            "--profile",
            "dev",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--report-json",
            str(report),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(report.read_text())
    failing = {(r["rule"], r["term"]) for r in data["rows"] if r["status"] == "FAIL"}
    assert failing == {
        (rule, term)
        for rule in ("C-SCALAR-1", "C-MASK-1", "C-INVARIANT-1")
        for term in ("nuc_loss", "total_loss")
    }
    (cause,) = data["causes"]
    assert {(r["rule"], r["term"]) for r in cause["rows"]} == failing
    assert cause["summary"].startswith("nuc_loss raised ValueError('Invalid target values")
    # Text: the cause first, one representative failure, the rest folded.
    lines = done.stdout.splitlines()
    assert lines[0] == "1 cause explains 6 failing rows:"
    assert lines[1].startswith("  cause 1: 6 rows: nuc_loss raised ValueError(")
    assert done.stdout.count("\nFAILED ") == 1
    assert "more failures of cause 1:" in done.stdout
