"""One ``mutate`` run: the original first, then every mutant, then the report."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from robustness.mutate.equivalent import Equivalent
from robustness.mutate.generation import Mutant, SourceFile, diff, mutated_source
from robustness.mutate.reporting import Record, render, report_json, write_json
from robustness.mutate.running import (
    KillOrder,
    Outcome,
    Result,
    RunConfig,
    TestRecord,
    WorkerPool,
    select_tests,
)

__all__ = ["run_session"]

EXIT_OK, EXIT_SURVIVORS, EXIT_BROKEN = 0, 1, 3


def _default_profile() -> str:
    return "ci" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "dev"


def _gathered(loss: str) -> str | None:
    from robustness.target import find_gathered_loss, load_loss_target

    spec, _ = find_gathered_loss(load_loss_target(loss))
    return spec


def _original(
    pool: WorkerPool, workers: int
) -> tuple[dict[str, TestRecord], list[str], list[float]]:
    """Run the unmutated target split over the workers; ``(records, errors, CPU seconds)``."""
    tasks = [("original", shard, workers) for shard in range(workers)]
    records: dict[str, TestRecord] = {}
    errors: list[str] = []
    cpu: list[float] = []
    for _, kind, value in pool.run(tasks, [None] * len(tasks)):
        if kind != "ok":
            errors.append(str(value))
            continue
        assert isinstance(value, Outcome)
        cpu.append(value.cpu_seconds)
        if value.error:
            errors.append(value.error)
        for nodeid, record in value.records.items():
            if record.seconds > 0 or record.outcome != "passed":
                records[nodeid] = record
    return records, errors, cpu


def run_session(
    options: argparse.Namespace,
    loss: str,
    metrics: str,
    sources: Sequence[SourceFile],
    texts: dict[str, str],
    mutants: Sequence[Mutant],
    equivalents: Sequence[Equivalent],
) -> int:
    """Run the contract on the original and on ``mutants``; print and write the report."""
    from robustness.target import load_loss_target, load_metrics_target

    load_loss_target(loss)  # a target that cannot be used is a usage error, up front
    load_metrics_target(metrics)
    profile = options.profile or _default_profile()
    paths = {s.relpath: str(s.path) for s in sources}
    config = RunConfig(
        loss=loss,
        metrics=metrics,
        gathered=_gathered(loss),
        profile=profile,
        rules=options.rules,
        traced_files=tuple(paths.values()),
        cwd=os.getcwd(),
    )
    started = time.perf_counter()

    def say(text: str) -> None:
        if not options.quiet:
            print(text, flush=True)

    say(
        f"robustness mutate: {len(mutants)} mutants of {', '.join(paths)}; running the "
        f"original target first (profile {profile}, {options.workers} workers)"
    )
    with WorkerPool(options.workers, config) as pool:
        original, errors, original_cpu = _original(pool, options.workers)
        if errors or not original:
            print(
                "robustness mutate: error: the contract did not run on the original target: "
                + (errors[0].strip().splitlines()[-1] if errors else "no tests were collected"),
                file=sys.stderr,
            )
            return EXIT_BROKEN
        failed = sorted({r.rule for r in original.values() if r.outcome == "failed"})
        failed_tests = sum(r.outcome == "failed" for r in original.values())
        original_seconds = time.perf_counter() - started
        if failed:
            say(
                f"robustness mutate: NOTE: the original target FAILS {', '.join(failed)} "
                f"({failed_tests} test(s)); mutants are judged only by the rules it passes"
            )
        else:
            say(f"robustness mutate: the original passes every rule ({original_seconds:.0f} s)")
        excluded = frozenset(failed)
        tasks: list[tuple[Any, ...]] = []
        limits: list[float | None] = []
        keeps: list[list[str]] = []
        for mutant in mutants:
            keep = select_tests(mutant, original, paths[mutant.file], excluded)
            cost = sum(original[n].seconds for n in keep)
            limit = options.timeout if options.timeout is not None else 30.0 + 4.0 * cost
            keeps.append(keep)
            tasks.append(
                ("mutant", mutant, mutated_source(mutant, texts[mutant.file]), keep, limit)
            )
            limits.append(limit)
        results: dict[int, Result] = {}
        order = KillOrder()

        def prepare(index: int, task: tuple[Any, ...]) -> tuple[Any, ...]:
            kind, mutant, source, keep, limit = task
            return (kind, mutant, source, order.order(mutant, keep), limit)

        for index, kind, value in pool.run(tasks, limits, prepare):
            if kind == "ok":
                results[index] = value
                if value.status == "killed" and value.test:
                    order.record(mutants[index], value.test)
            elif kind == "timeout":
                results[index] = Result("timeout", detail="worker stopped answering; terminated")
            elif kind == "crash":
                results[index] = Result("killed", rule="crash", detail=str(value))
            else:
                results[index] = Result("invalid", detail=str(value).strip().splitlines()[-1])
            result = results[index]
            if not options.quiet:
                mutant = mutants[index]
                print(
                    f"  [{len(results)}/{len(mutants)}] {mutant.id} {mutant.operator:<28} "
                    f"{result.status:<8} {result.rule:<16} {result.seconds:5.1f} s "
                    f"{mutant.label}",
                    flush=True,
                )
    records = []
    stale = []
    for index, mutant in enumerate(mutants):
        result = results[index]
        status = result.status
        listed = next((e for e in equivalents if e.matches(mutant)), None)
        detail = result.detail
        if listed is not None:
            if status == "survived":
                status, detail = "equivalent", listed.reason
            elif status in ("killed", "timeout") and listed.id is not None:
                stale.append(mutant.id)
        if status == "survived" and not keeps[index]:
            detail = "no contract test executes this code"
        records.append(
            Record(
                id=mutant.id,
                operator=mutant.operator,
                generic=mutant.generic,
                file=mutant.file,
                line=mutant.line,
                function=mutant.function,
                status=status,
                rule=result.rule,
                test=result.test,
                detail=detail,
                seconds=round(result.seconds, 2),
                cpu_seconds=round(result.cpu_seconds, 2),
                tests_run=result.tests_run,
                before=mutant.original,
                after=mutant.replacement,
                diff=diff(mutant, texts[mutant.file]),
            )
        )
    wall = time.perf_counter() - started
    state = {
        "passes": not failed,
        "failed_rules": failed,
        "failed_tests": failed_tests,
        "tests": len(original),
        "seconds": round(original_seconds, 1),
    }
    print(render(records, state, show_survivors=not options.quiet))
    if stale:
        print(f"note: listed as equivalent but killed (remove from the list): {', '.join(stale)}")
    minutes = wall / 60
    cpu_minutes = (sum(original_cpu) + sum(r.cpu_seconds for r in results.values())) / 60
    print(
        f"robustness mutate: {len(mutants)} mutants in {minutes:.1f} min "
        f"({len(mutants) / minutes if minutes else 0:.1f} mutants/min, {options.workers} workers, "
        f"profile {profile}); worker CPU time {cpu_minutes:.1f} min (the original "
        f"{sum(original_cpu) / 60:.1f}); load average {os.getloadavg()[0]:.1f}"
    )
    if options.report_json:
        extra = {
            "target": loss,
            "metrics": metrics,
            "profile": profile,
            "workers": options.workers,
            "wall_seconds": round(wall, 1),
            "cpu_seconds": round(cpu_minutes * 60, 1),
            "load_average": round(os.getloadavg()[0], 1),
            "shard": options.shard,
            "since": options.since,
        }
        write_json(options.report_json, report_json(records, state, extra))
    return EXIT_SURVIVORS if any(r.status == "survived" for r in records) else EXIT_OK
