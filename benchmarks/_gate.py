"""The gate's cost: wall time per Hypothesis profile and per rule family, examples per second.

Runs ``python -m robustness gate --profile P --workers W --report-json F --quiet`` in a
subprocess (the gate starts its own pytest and xdist workers) and reads the JSON report. A
gate that cannot run (import error, timeout, no report) is recorded as skipped with the
reason; a gate that runs and finds violations is still timed (its verdict is reported).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["GATE_TARGETS_S", "bench_gate", "bench_gate_changed", "rule_family"]

#: Issue 13's gate targets, seconds on a quiet 2-core machine (``gate_changed``: one term edited).
GATE_TARGETS_S = {"dev": 12.0, "changed": 8.0, "ci": 60.0}

_FAMILY_RE = re.compile(r"^(?P<family>.+?)-\d+$")


def rule_family(rule: str) -> str:
    """The family of a rule id: ``C-MASK-2`` -> ``C-MASK`` (ids without a number unchanged)."""
    match = _FAMILY_RE.match(rule)
    return match.group("family") if match else rule


def _families(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Sum the report's rule × term rows into families (test seconds summed over workers)."""
    families: dict[str, dict[str, Any]] = {}
    for row in rows:
        family = families.setdefault(
            rule_family(str(row.get("rule", "-"))),
            {"rules": [], "tests": 0, "examples": 0, "seconds": 0.0},
        )
        if row.get("rule") not in family["rules"]:
            family["rules"].append(row.get("rule"))
        family["tests"] += int(row.get("tests", 0))
        family["examples"] += int(row.get("examples", 0))
        family["seconds"] += float(row.get("seconds", 0.0))
    for family in families.values():
        seconds = family["seconds"]
        family["examples_per_s"] = family["examples"] / seconds if seconds > 0 else None
    return dict(sorted(families.items(), key=lambda kv: -kv[1]["seconds"]))


def _run_profile(
    profile: str, *, workers: int, timeout_s: float, extra_args: Sequence[str]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        report = Path(tmp) / "gate.json"
        command = [
            sys.executable, "-m", "robustness", "gate",
            "--profile", profile,
            "--workers", str(workers),
            "--report-json", str(report),
            "--repro-dir", str(Path(tmp) / "repros"),
            "--quiet",
            *extra_args,
        ]  # fmt: skip
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            return {"status": "skipped", "reason": f"timed out after {timeout_s:.0f} s"}
        wall = time.perf_counter() - start
        if not report.exists():
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return {
                "status": "skipped",
                "reason": f"gate exited {proc.returncode} without a report: "
                + (lines[-1] if lines else "no output"),
                "wall_s": wall,
            }
        data = json.loads(report.read_text())
    gate_wall = float(data.get("wall_seconds", wall))
    examples = int(data.get("examples", 0))
    return {
        "status": "ran",
        "verdict": data.get("verdict"),
        "exit_status": proc.returncode,
        "workers": workers,
        # Process wall time includes interpreter start-up and imports; the gate's own number
        # is the pytest run.
        "wall_s": wall,
        "gate_wall_s": gate_wall,
        "examples": examples,
        "examples_per_s": examples / gate_wall if gate_wall > 0 else None,
        "families": _families(data.get("rows", [])),
    }


def bench_gate(
    profiles: Sequence[str],
    *,
    workers: int = 2,
    timeout_s: float = 900.0,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the gate once per profile and time it.

    Args:
        profiles: Hypothesis profiles, e.g. ``("dev", "ci")``.
        workers: ``--workers`` (pytest-xdist processes).
        timeout_s: give up on one profile after this long (recorded as skipped).
        extra_args: more gate options (e.g. ``--target``), passed through.

    Returns:
        profile -> ``{"status": "ran", "wall_s", "gate_wall_s", "examples",
        "examples_per_s", "families", ...}`` or ``{"status": "skipped", "reason"}``.
    """
    return {
        profile: _run_profile(profile, workers=workers, timeout_s=timeout_s, extra_args=extra_args)
        for profile in profiles
    }


def _record_all_but(state: Path, changed: Sequence[str], *, profile: str, device: str) -> None:
    """Write a ``--changed`` state in which every term but ``changed`` passed just now."""
    from robustness.changes import record_passes, term_keys
    from robustness.target import load_loss_target, load_metrics_target

    loss, metrics = load_loss_target(), load_metrics_target()
    rows = [
        {"rule": "-", "term": term, "status": "pass"}
        for term in term_keys(loss, metrics)
        if term not in changed
    ]
    record_passes(None, loss, metrics, rows, profile=profile, device=device, state=state)


def bench_gate_changed(
    changed: Sequence[str] = ("count_loss", "total_loss"),
    *,
    profile: str = "dev",
    workers: int | None = None,
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Time ``gate --changed`` as it runs after an edit to one term of the default target.

    The state file records every term as passed except ``changed``; the default is what an
    edit to ``compute_count_loss`` leaves (``total_loss`` calls it, so it changes too). No
    source is edited.

    Args:
        changed: the terms left unrecorded (they run).
        profile: ``--profile``.
        workers: ``--workers``; ``None`` lets the gate choose (serial for one term).
        timeout_s: give up after this long (recorded as skipped).

    Returns:
        ``{"status": "ran", "wall_s", "gate_wall_s", "verdict", "rows", "unchanged", ...}`` or
        ``{"status": "skipped", "reason"}``.
    """
    with tempfile.TemporaryDirectory(prefix="bench-gate-changed-") as tmp:
        state = Path(tmp) / "changes.json"
        _record_all_but(state, changed, profile=profile, device="all")
        report = Path(tmp) / "gate.json"
        command = [
            sys.executable, "-m", "robustness", "gate", "--changed",
            "--state", str(state),
            "--profile", profile,
            "--report-json", str(report),
            "--repro-dir", str(Path(tmp) / "repros"),
            "--quiet",
            *(["--workers", str(workers)] if workers is not None else []),
        ]  # fmt: skip
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            return {"status": "skipped", "reason": f"timed out after {timeout_s:.0f} s"}
        wall = time.perf_counter() - start
        if not report.exists():
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return {
                "status": "skipped",
                "reason": f"gate exited {proc.returncode} without a report: "
                + (lines[-1] if lines else "no output"),
                "wall_s": wall,
            }
        data = json.loads(report.read_text())
    return {
        "status": "ran",
        "verdict": data.get("verdict"),
        "exit_status": proc.returncode,
        "changed": list(changed),
        "workers": data.get("workers"),
        "wall_s": wall,
        "gate_wall_s": float(data.get("wall_seconds", wall)),
        "rows": len(data.get("rows", [])),
        "unchanged": sorted(data.get("unchanged", {})),
        "target_s": GATE_TARGETS_S["changed"],
    }
