"""``python -m robustness mutate``: how much of the target's own code does the contract guard?

Generates mutants of the target's source (the modules of the loss class and of the metrics
target, or ``--paths``), one change at one place each, runs the contract on each (see
:mod:`robustness.mutate.running`) and reports a mutation score per operator and per file,
the surviving mutants with their diffs, and (``--report-json``) one record per mutant.

Exit status: 0 no mutant survived, 1 some survived, 2 usage error, 3 the run itself broke.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustness.errors import HarnessUsageError
from robustness.gate import PROFILE_CHOICES, _Parser, add_target_options
from robustness.mutate.equivalent import AAM_EQUIVALENTS, load_equivalents
from robustness.mutate.generation import Mutant, SourceFile, diff, generate
from robustness.mutate.loading import module_file, package_root
from robustness.mutate.operators import OPERATORS, operator_names
from robustness.mutate.reporting import render, report_json, write_json
from robustness.mutate.sharding import in_shard, merge_reports, parse_shard
from robustness.mutate.since import changed_lines

__all__ = ["build_parser", "run_mutate"]

EXIT_OK, EXIT_SURVIVORS, EXIT_USAGE, EXIT_BROKEN = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    """The ``mutate`` command's options."""
    parser = _Parser(prog="robustness mutate", description=__doc__.splitlines()[0])
    add_target_options(parser)
    parser.add_argument(
        "--paths",
        nargs="+",
        type=Path,
        default=None,
        metavar="FILE",
        help="files to mutate (default: the modules of the loss class and the metrics "
        "target); each must belong to the target's packages",
    )
    parser.add_argument("--profile", choices=PROFILE_CHOICES, default=None)
    parser.add_argument(
        "--rules", default=None, metavar="ID[,ID...]", help="run only these rule ids / prefixes"
    )
    parser.add_argument(
        "--operators",
        default=None,
        metavar="NAME[,NAME...]",
        help="operators to apply: names, 'numerical' (default), 'generic' or 'all'",
    )
    parser.add_argument("--max-mutants", type=int, default=None, metavar="N")
    parser.add_argument(
        "--ids",
        default=None,
        metavar="ID[,ID...]",
        help="only these mutants (ids as --list prints them), e.g. to re-check survivors",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="limit per mutant (default: 30 s + 4x the original's time on the same tests)",
    )
    parser.add_argument("--shard", default=None, metavar="K/N", help="run shard K of N")
    parser.add_argument(
        "--since", default=None, metavar="REV", help="only lines changed since git revision REV"
    )
    parser.add_argument("--list", action="store_true", help="list the mutants; run nothing")
    parser.add_argument("--show", default=None, metavar="ID", help="print one mutant's diff")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--report-json", type=Path, default=None, metavar="PATH")
    parser.add_argument(
        "--equivalent",
        type=Path,
        default=None,
        metavar="TOML",
        help="reviewed equivalent mutants (default: the packaged list for the aam target)",
    )
    parser.add_argument(
        "--merge", nargs="+", type=Path, default=None, metavar="JSON", help="merge shard reports"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    _config_hook(parser)
    return parser


def _config_hook(parser: argparse.ArgumentParser) -> None:
    """Take defaults from ``[tool.robustness]`` when ``robustness.config`` provides them."""
    try:
        from robustness.config import gate_defaults, load_config  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # helper "adopt" adds robustness/config.py; until then: no config
        return
    defaults = gate_defaults(load_config())
    known = {action.dest for action in parser._actions}
    parser.set_defaults(**{k: v for k, v in defaults.items() if k in known})


def _operators(text: str | None) -> list[str]:
    if text is None or text == "numerical":
        return list(operator_names())
    if text == "all":
        return list(operator_names(generic=True))
    if text == "generic":
        return [n for n, op in OPERATORS.items() if op.generic]
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPERATORS]
    if unknown:
        raise HarnessUsageError(
            f"--operators: unknown {', '.join(unknown)}; choose from {', '.join(OPERATORS)}"
        )
    return names


def _specs(options: argparse.Namespace) -> tuple[str, str]:
    from robustness.target import (
        DEFAULT_LOSS_TARGET,
        DEFAULT_METRICS_TARGET,
        LOSS_TARGET_ENV,
        METRICS_TARGET_ENV,
    )

    loss = options.target or os.environ.get(LOSS_TARGET_ENV) or DEFAULT_LOSS_TARGET
    metrics = options.metrics or os.environ.get(METRICS_TARGET_ENV) or DEFAULT_METRICS_TARGET
    return loss, metrics


def _source(module: str) -> SourceFile:
    _top, root = package_root(module)
    path = module_file(module)
    relpath = path.relative_to(root.parent).as_posix()
    return SourceFile(path, module, relpath)


def _sources(options: argparse.Namespace, loss: str, metrics: str) -> list[SourceFile]:
    modules = [loss.partition(":")[0], metrics]
    if options.paths is None:
        seen: dict[Path, SourceFile] = {}
        for module in modules:
            source = _source(module)
            seen.setdefault(source.path, source)
        return list(seen.values())
    roots = {package_root(m) for m in modules}
    sources = []
    for given in options.paths:
        path = given.resolve()
        if not path.is_file() or path.suffix != ".py":
            raise HarnessUsageError(f"--paths: {given} is not a Python source file")
        for _top, root in roots:
            if path == root or (root.is_dir() and path.is_relative_to(root)):
                rel = path.relative_to(root.parent)
                parts = list(rel.with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                sources.append(SourceFile(path, ".".join(parts), rel.as_posix()))
                break
        else:
            names = ", ".join(sorted(top for top, _ in roots))
            raise HarnessUsageError(
                f"--paths: {given} is not part of the target's packages ({names}); the contract "
                "would never run a mutant of it"
            )
    return sources


def _select(
    options: argparse.Namespace, mutants: list[Mutant], sources: list[SourceFile]
) -> list[Mutant]:
    if options.since:
        changed = {s.relpath: changed_lines(s.path, options.since) for s in sources}
        mutants = [m for m in mutants if changed[m.file] & set(range(m.line, m.end_line + 1))]
    if options.shard:
        shard = parse_shard(options.shard)
        mutants = [m for m in mutants if in_shard(m.id, shard)]
    if options.ids:
        wanted = [i.strip() for i in options.ids.split(",") if i.strip()]
        known = {m.id for m in mutants}
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise HarnessUsageError(
                f"--ids: no mutant {', '.join(unknown)} among the {len(mutants)} selected; "
                "ids follow the code (`mutate --list` prints the current ones)"
            )
        mutants = [m for m in mutants if m.id in set(wanted)]
    if options.max_mutants is not None:
        if options.max_mutants < 0:
            raise HarnessUsageError(f"--max-mutants must be >= 0, got {options.max_mutants}")
        mutants = mutants[: options.max_mutants]
    return mutants


def run_mutate(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m robustness mutate``; return the exit status."""
    parser = build_parser()
    options = parser.parse_args(argv)
    try:
        return _main(options)
    except HarnessUsageError as exc:
        print(f"robustness mutate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _main(options: argparse.Namespace) -> int:
    if options.merge:
        records, original = merge_reports(options.merge)
        print(render(records, original, show_survivors=not options.quiet))
        if options.report_json:
            extra = {"target": original.pop("target"), "metrics": original.pop("metrics")}
            write_json(options.report_json, report_json(records, original, extra))
        return EXIT_SURVIVORS if any(r.status == "survived" for r in records) else EXIT_OK
    if options.workers < 1:
        raise HarnessUsageError(f"--workers must be >= 1, got {options.workers}")
    if options.timeout is not None and options.timeout <= 0:
        raise HarnessUsageError(f"--timeout must be > 0 seconds, got {options.timeout}")
    operators = [OPERATORS[name] for name in _operators(options.operators)]
    loss, metrics = _specs(options)
    sources = _sources(options, loss, metrics)
    texts = {s.relpath: s.text() for s in sources}
    every = generate(sources, operators)
    if options.show:
        found = [m for m in every if m.id == options.show]
        if not found:
            raise HarnessUsageError(f"--show: no mutant {options.show!r} (see --list)")
        mutant = found[0]
        print(f"{mutant.id} {mutant.operator} {mutant.label} ({mutant.function})")
        print(diff(mutant, texts[mutant.file]), end="")
        return EXIT_OK
    mutants = _select(options, every, sources)
    if options.list:
        for m in mutants:
            kind = " [generic]" if m.generic else ""
            print(f"{m.id}  {m.operator:<28} {m.label:<34} {m.function}{kind}")
        print(
            f"robustness mutate: {len(mutants)} mutants from "
            f"{len({m.operator for m in mutants})} operators in {len(sources)} file(s)"
        )
        return EXIT_OK
    from robustness.mutate.session import run_session

    equivalents = _equivalents(options, loss)
    if options.operators is None and options.paths is None:
        known = {m.id for m in every}
        gone = [e.id for e in equivalents if e.id is not None and e.id not in known]
        if gone:
            print(
                f"note: {len(gone)} equivalent "
                f"{'entry matches' if len(gone) == 1 else 'entries match'} no mutant of the "
                f"current code (it changed; remove or re-review): {', '.join(gone)}"
            )
    return run_session(options, loss, metrics, sources, texts, mutants, equivalents)


def _equivalents(options: argparse.Namespace, loss: str) -> list[Any]:
    from robustness.target import DEFAULT_LOSS_TARGET

    path = options.equivalent
    if path is None and loss == DEFAULT_LOSS_TARGET:
        path = AAM_EQUIVALENTS
    return load_equivalents(path) if path is not None else []
