"""Run the benchmarks, print the tables, write the JSON (and the scaling plot).

Usage::

    python -m benchmarks                 # loss, streaming metrics, scaling (a few minutes)
    python -m benchmarks --quick         # tiny sizes, seconds (a smoke run)
    python -m benchmarks --gate          # ...plus the gate under the dev and ci profiles
    python -m benchmarks --sections loss --repeats 20 --threads 2

Everything is measured in one process, side by side (candidates interleaved round-robin),
as medians over ``--repeats`` after ``--warmup`` rounds, with ``torch.set_num_threads`` fixed
(and reported). The JSON (default ``benchmarks/results/latest.json``) records the date, the
machine and the settings next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from benchmarks._gate import bench_gate
from benchmarks._loss import DEFAULT_SIZES, QUICK_SIZES, LossSizes, bench_loss
from benchmarks._metrics import METRIC_FAMILIES, bench_streaming, torchmetrics_available
from benchmarks._scaling import bench_scaling, matplotlib_available, plot_scaling
from benchmarks._targets import TARGET_LIMITS, bench_targets

__all__ = ["SECTIONS", "build_parser", "main", "run"]

#: Sections run by default; ``--gate`` adds ``gate``.
SECTIONS = ("loss", "targets", "metrics", "scaling")
_RESULTS = Path(__file__).with_name("results")

#: The issue-5 targets the report checks against.
TARGETS = {
    "loss_fwd_bwd_max_ratio": 1.3,
    "streaming_min_ratio_vs_python_loop": 100.0,
    "streaming_min_ratio_vs_torchmetrics": 1.0,
    "gate_ci_max_s": 120.0,
    "gate_dev_max_s": 20.0,
}


def _positive_int(text: str) -> int:
    try:
        value = int(float(text))  # accepts 1e6
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1 or value != float(text):
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    if text.strip() == "0":
        return 0
    return _positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m benchmarks``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes everywhere (seconds; for smoke tests)"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        metavar="NAME[,NAME...]",
        help=f"which of {', '.join(SECTIONS)} to run (default: all)",
    )
    parser.add_argument(
        "--gate",
        action="store_true",
        help="also time the gate (minutes; runs python -m robustness gate)",
    )
    parser.add_argument(
        "--gate-profiles",
        default="dev,ci",
        metavar="P[,P...]",
        help="gate profiles to time (default: dev,ci)",
    )
    parser.add_argument(
        "--gate-workers", type=_non_negative_int, default=2, help="gate --workers (default: 2)"
    )
    parser.add_argument(
        "--gate-timeout",
        type=_positive_int,
        default=900,
        help="seconds before a gate run is given up (default: 900)",
    )
    parser.add_argument(
        "--repeats",
        type=_positive_int,
        default=None,
        help="timed rounds per measurement (default: 7, quick: 1)",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative_int,
        default=None,
        help="untimed rounds first (default: 2, quick: 0)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch.set_num_threads (default: 1, steadier on a shared machine)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--batch", type=_positive_int, default=None, help="B (default: 16)")
    parser.add_argument("--asvs", type=_positive_int, default=None, help="A (default: 512)")
    parser.add_argument("--length", type=_positive_int, default=None, help="L (default: 150)")
    parser.add_argument("--vocab", type=_positive_int, default=None, help="V (default: 6)")
    parser.add_argument(
        "--embed-dim",
        type=_positive_int,
        default=None,
        help="embedding width D for the pairwise term (default: 128)",
    )
    parser.add_argument(
        "--stream-n",
        type=_positive_int,
        default=None,
        help="elements streamed per metric (default: 1e6)",
    )
    parser.add_argument(
        "--loop-n",
        type=_positive_int,
        default=None,
        help="elements for the Python-loop baseline (default: 1e5)",
    )
    parser.add_argument(
        "--stream-batch",
        type=_positive_int,
        default=None,
        help="mean elements per update (default: 8192, e.g. 16 x 512 counts)",
    )
    parser.add_argument(
        "--small-batch",
        type=_positive_int,
        default=16,
        help="mean elements per update of the per-call overhead run "
        "(default: 16, one AAM step's targets)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=_RESULTS / "latest.json",
        help="JSON results (default: benchmarks/results/latest.json)",
    )
    parser.add_argument(
        "--plot", type=Path, default=None, help="scaling PNG (default: scaling.png beside --output)"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw the scaling PNG")
    return parser


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve defaults (quick or full) into the settings recorded in the JSON."""
    quick = args.quick
    base = QUICK_SIZES if quick else DEFAULT_SIZES
    overrides = {
        "batch": args.batch,
        "asvs": args.asvs,
        "length": args.length,
        "vocab": args.vocab,
        "embed_dim": args.embed_dim,
    }
    sizes = LossSizes(**{**base.__dict__, **{k: v for k, v in overrides.items() if v}})
    stream_n = args.stream_n or (10_000 if quick else 1_000_000)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown --sections {', '.join(unknown)}; choose from {SECTIONS}")
    if args.gate:
        sections.append("gate")
    return {
        "quick": quick,
        "sections": sections,
        "repeats": args.repeats or (1 if quick else 7),
        "warmup": args.warmup if args.warmup is not None else (0 if quick else 2),
        "threads": args.threads,
        "device": args.device,
        "loss_sizes": sizes,
        "stream_n": stream_n,
        "loop_n": min(stream_n, args.loop_n or (1_000 if quick else 100_000)),
        "stream_batch": args.stream_batch or (256 if quick else 8192),
        "small_batch": args.small_batch,
        "small_n": min(stream_n, 1_000 if quick else 20_000),
        "scaling_stream_ns": [stream_n // 100, stream_n // 10, stream_n],
        "gate_profiles": [p.strip() for p in args.gate_profiles.split(",") if p.strip()],
        "gate_workers": args.gate_workers,
        "gate_timeout_s": args.gate_timeout,
        "optional": {
            "torchmetrics": torchmetrics_available(),
            "matplotlib": matplotlib_available(),
        },
    }


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: platform, CPUs, load, Python and torch."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    if hasattr(os, "getloadavg"):
        # Other processes' load makes timings noisy; recorded so a reader can judge.
        info["loadavg_1m"] = os.getloadavg()[0]
    return info


def run(settings: dict[str, Any]) -> dict[str, Any]:
    """Run the sections of ``settings`` (see :func:`_settings`); return the JSON-ready results.

    Sets ``torch.set_num_threads(settings["threads"])`` for the whole run.
    """
    torch.set_num_threads(settings["threads"])
    device = torch.device(settings["device"])
    timing = {"repeats": settings["repeats"], "warmup": settings["warmup"], "device": device}
    sizes: LossSizes = settings["loss_sizes"]
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {**settings, "loss_sizes": sizes.__dict__},
        "targets": TARGETS,
    }
    sections = settings["sections"]
    if "loss" in sections:
        results["loss"] = bench_loss(sizes, **timing)
    if "targets" in sections:
        # Issue 13's targets at 1 and 2 threads (restores the thread count afterwards).
        results["issue13_targets"] = bench_targets(
            sizes, repeats=settings["repeats"], warmup=settings["warmup"], device=device
        )
    if "metrics" in sections:
        results["metrics"] = {
            family: bench_streaming(
                family,
                elements=settings["stream_n"],
                loop_elements=settings["loop_n"],
                mean_batch=settings["stream_batch"],
                small_batch=settings["small_batch"],
                small_elements=settings["small_n"],
                **timing,
            )
            for family in METRIC_FAMILIES
        }
    if "scaling" in sections:
        results["scaling"] = bench_scaling(
            sizes, settings["scaling_stream_ns"], mean_batch=settings["stream_batch"], **timing
        )
    if "gate" in sections:
        results["gate"] = bench_gate(
            settings["gate_profiles"],
            workers=settings["gate_workers"],
            timeout_s=settings["gate_timeout_s"],
        )
    return results


# ------------------------------------------------------------------------------ printing


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: left-aligned first column, right-aligned numbers."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [str(first).ljust(widths[0])]
            + [str(c).rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        ).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3f}" if seconds < 0.01 else f"{1e3 * seconds:.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}M"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_targets(targets: dict[str, Any]) -> list[str]:
    """Issue 13's targets: the compute floor, then each target's ratio, limit and verdict."""
    lines = ["Compute floor of nuc_loss (ms): one exp / one clone pass over the logits"]
    rows = []
    for threads, measured in targets["by_threads"].items():
        sec, r = measured["seconds"]["nuc_loss"], measured["ratios"]
        rows.append([
            f"{threads} thread(s)", _ms(sec["exp"]), _ms(sec["clone"]), _ms(sec["aam"]),
            _ms(sec["baseline_select"]), _ratio(r["nuc_vs_exp_floor"]),
            _ratio(r["nuc_vs_clone_floor"]), _ratio(r["nuc_vs_select"]),
        ])  # fmt: skip
    lines.append(format_table(
        ["threads", "exp", "clone", "aam nuc", "select CE", "aam/exp", "aam/clone", "aam/select"],
        rows,
    ))  # fmt: skip
    lines += ["", "Issue 13 targets (ratios of in-process medians; gate timings: --gate)"]
    rows = []
    for name, (what, limit) in TARGET_LIMITS.items():
        for threads, measured in targets["by_threads"].items():
            ok = measured["met"][name]
            rows.append([
                what, threads, _ratio(measured["ratios"][name]), f"<= {limit}x",
                "met" if ok else "NOT met",
            ])  # fmt: skip
    lines.append(format_table(["target", "threads", "measured", "limit", "verdict"], rows))
    return lines


def render(results: dict[str, Any]) -> str:
    """The human-readable report of :func:`run`'s results."""
    machine, settings = results["machine"], results["settings"]
    out = [
        f"benchmarks {results['date']} — {machine['platform']}, {machine['cpu_count']} cpus, "
        f"torch {machine['torch']}, {machine['torch_threads']} thread(s), device "
        f"{settings['device']}, median of {settings['repeats']} after {settings['warmup']} "
        f"warm-up, load {machine.get('loadavg_1m', '?')}"
    ]
    if "loss" in results:
        loss = results["loss"]
        s, p = loss["sizes"], loss["padding"]
        out += [
            "",
            f"MultiTaskLoss forward+backward (ms): B={s['batch']} A={s['asvs']} "
            f"L={s['length']} V={s['vocab']} D={s['embed_dim']}, padding {100 * p['asv']:.0f}% "
            f"ASVs / {100 * p['nucleotide']:.0f}% positions",
        ]
        rows = []
        parts = [("total", loss), *loss.get("terms", {}).items()]
        for name, part in parts:
            sec, r = part["seconds"], part["ratios"]
            rows.append([
                name,
                _ms(sec["aam"]["median_s"]),
                _ms(sec["baseline_mul"]["median_s"]),
                _ms(sec["baseline_select"]["median_s"]),
                _ratio(r["vs_baseline_mul"]),
                _ratio(r["vs_baseline_select"]),
            ])  # fmt: skip
        out.append(format_table(
            ["term", "aam", "mul-mask", "select", "aam/mul", "aam/select"], rows
        ))  # fmt: skip
        worst = max(loss["rel_diff"].values())
        out.append(
            f"(values agree with the baseline to a relative {worst:.1e}; target: total "
            f"<= {TARGETS['loss_fwd_bwd_max_ratio']}x the faster baseline)"
        )
    if "issue13_targets" in results:
        out += ["", *render_targets(results["issue13_targets"])]
    if "metrics" in results:
        out += ["", "Streaming metrics, elements/s (update over ragged batches + compute)"]
        rows = []
        for family, m in results["metrics"].items():
            rates, small = m["elements_per_s"], m["small_batch"]
            rows.append([
                family,
                _rate(rates["aam"]),
                _rate(rates["python_loop"]),
                _rate(rates["python_loop_item"]),
                _rate(rates.get("torchmetrics")),
                _ratio(m["ratios"]["vs_python_loop"]),
                _ratio(m["ratios"]["vs_python_loop_item"]),
                _ratio(m["ratios"]["vs_torchmetrics"]),
                f"{small['us_per_update']['aam']:.0f}",
                f"{small['us_per_update'].get('torchmetrics', float('nan')):.0f}"
                if "torchmetrics" in small["us_per_update"] else "-",
            ])  # fmt: skip
        out.append(format_table(
            ["metric", "aam", "py-loop", "item-loop", "torchmetrics", "aam/loop", "aam/item",
             "aam/tm",
             "us/update@small", "tm us/update"],
            rows,
        ))  # fmt: skip
        first = next(iter(results["metrics"].values()))
        out.append(
            f"(N={first['elements']['aam']:,} at ~{first['mean_batch']} per update; Python loops "
            f"on {first['elements']['python_loop']:,} (.tolist()) and "
            f"{first['elements']['python_loop_item']:,} (.item()); us/update@small: "
            f"~{first['small_batch']['mean_batch']}"
            f" per update; torchmetrics "
            f"{'installed' if settings['optional']['torchmetrics'] else 'not installed'})"
        )
    if "scaling" in results:
        sc = results["scaling"]
        out += ["", "Growth exponents (log-log slope; 1 = linear, 2 = quadratic)"]
        rows = []
        for curve in [*sc["loss"], sc["pairwise"]]:
            pts = curve["points"]
            rows.append([
                f"{curve['term']} vs {curve['dim']}",
                " ".join(str(pt["size"]) for pt in pts),
                " ".join(_ms(pt["aam_s"]) for pt in pts),
                f"{curve['exponent']['aam']:.2f}",
                f"{curve['exponent']['baseline_mul']:.2f}",
            ])  # fmt: skip
        for curve in sc["streaming"]:
            pts = curve["points"]
            rows.append([
                f"stream {curve['family']} vs N",
                " ".join(f"{pt['size']:.0e}" for pt in pts),
                " ".join(_ms(pt["aam_s"]) for pt in pts),
                f"{curve['exponent']['aam']:.2f}",
                "-",
            ])  # fmt: skip
        out.append(format_table(["curve", "sizes", "aam ms", "aam exp", "baseline exp"], rows))
        if "plot" in results:
            out.append(f"(plot: {results['plot']})")
    if "gate" in results:
        out += ["", "Gate (python -m robustness gate)"]
        rows = []
        for profile, g in results["gate"].items():
            if g["status"] != "ran":
                rows.append([profile, "skipped", "-", "-", "-", "-"])
                continue
            rows.append([
                profile, g["verdict"], f"{g['wall_s']:.1f}", f"{g['gate_wall_s']:.1f}",
                str(g["examples"]), f"{g['examples_per_s'] or 0:.0f}",
            ])  # fmt: skip
        out.append(format_table(
            ["profile", "verdict", "wall s", "pytest s", "examples", "examples/s"], rows
        ))  # fmt: skip
        for profile, g in results["gate"].items():
            if g["status"] != "ran":
                out.append(f"gate {profile} skipped: {g['reason']}")
                continue
            fam_rows = [
                [name, str(f["tests"]), str(f["examples"]), f"{f['seconds']:.1f}",
                 f"{f['examples_per_s'] or 0:.0f}"]
                for name, f in g["families"].items()
            ]  # fmt: skip
            out += ["", f"gate {profile}: per rule family (test seconds summed over workers)"]
            out.append(format_table(["family", "tests", "examples", "seconds", "ex/s"], fam_rows))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks``; returns the exit status (0, or 2 on bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
        torch.device(settings["device"])
    except (ValueError, RuntimeError) as exc:
        parser.error(str(exc))
    results = run(settings)
    if "scaling" in results and not args.no_plot:
        if matplotlib_available():
            plot = args.plot or args.output.with_name("scaling.png")
            m = results["machine"]
            title = (
                f"{results['date'][:10]} · {m['processor']} · {m['cpu_count']} cpus · "
                f"torch {m['torch']} · {m['torch_threads']} thread(s)"
            )
            results["plot"] = str(plot_scaling(results["scaling"], plot, title=title))
        else:
            print(
                "scaling plot skipped: matplotlib is not installed "
                "(pip install matplotlib, or the project's bench extra)",
                file=sys.stderr,
            )
    print(render(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {args.output}")
    return 0
