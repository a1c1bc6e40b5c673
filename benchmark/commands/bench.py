"""``python -m benchmark bench``: what each meta-step costs against B, evaluation and data throughput, and what
the default sweep (every algorithm x 8 held-out lines x k in {1, 3}) would take, for one configuration."""

from __future__ import annotations

import argparse
import importlib.util
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmark.errors import UserError
from benchmark.commands.options import _option, add_config_options, config_from_args

SWEEP_KS = (1, 3)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench",
        help="measure meta-step cost against B, evaluation and data throughput, and estimate the sweep",
        description="Time, in one process and in alternating rounds, B (one forward-backward pass over a "
        "meta-batch's support images), each algorithm's meta-step, evaluation (episodes adapted together and one "
        "by one) and meta-batch sampling; measure each meta-step's peak extra memory in a fresh process; estimate "
        "the default sweep from these timings.",
    )
    add_config_options(parser, skip=("algo", "algo_options"))
    parser.add_argument(
        "--algos", metavar="SPEC[,SPEC...]",
        help="variants to time, comma-separated: an algorithm name, optionally with settings as "
        "NAME:KEY=VALUE[:KEY=VALUE], e.g. maml,maml:task_batching=vmap,maml:inner_steps=5 (KEY: inner_steps, "
        "inner_lr, outer_optimizer, outer_lr, task_batching or an algorithm option); default: every algorithm",
    )
    parser.add_argument("--repeats", type=_positive, default=5, help="timed rounds (default: 5)")
    parser.add_argument("--warmup", type=_non_negative, default=1, help="untimed rounds first (default: 1)")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON instead of tables")
    parser.add_argument(
        "--compare-higher", action="store_true",
        help="also time second-order MAML through higher's innerloop_ctx (pip install higher) and check its "
        "meta-gradient against ours",
    )
    parser.set_defaults(func=main)


def parse_variants(text: str | None) -> list[tuple[str, str, dict]]:
    """(label, algorithm, settings) of each comma-separated spec ``NAME[:KEY=VALUE...]``."""
    import algorithms

    specs = [s.strip() for s in (text.split(",") if text else algorithms.available()) if s.strip()]
    if not specs:
        raise UserError("--algos names no algorithm")
    variants = []
    for spec in specs:
        name, *settings = spec.split(":")
        try:
            overrides = dict(_option(item) for item in settings)
        except argparse.ArgumentTypeError as err:
            raise UserError(f"--algos {spec!r}: {err}") from None
        variants.append((spec, name, overrides))
    labels = [label for label, _, _ in variants]
    if len(set(labels)) != len(labels):
        raise UserError(f"--algos names a variant twice: {text}")
    return variants


def main(args: argparse.Namespace) -> int:
    from benchmark.bench import apply_variant

    variants = {
        label: apply_variant(config_from_args(args, algo=name), name, overrides)
        for label, name, overrides in parse_variants(args.algos)
    }
    console = Console()
    if args.print_config:
        for label, config in variants.items():
            console.print_json(json.dumps({"variant": label, **config.to_dict(), "run_id": config.run_id}))
        return 0
    if args.compare_higher:
        if not any(config.algo == "maml" for config in variants.values()):
            raise UserError("--compare-higher compares against second-order MAML: include maml in --algos")
        if importlib.util.find_spec("higher") is None:
            raise UserError("--compare-higher needs the 'higher' package: pip install higher (the 'bench' extra)")
    from rich.progress import Progress

    import algorithms
    from benchmark import bench, estimate
    from tasks.catalogue import LINES

    first = next(iter(variants.values()))
    status = Console(stderr=True)
    with Progress(console=status, transient=True) as progress:
        task = progress.add_task("timing rounds", total=args.repeats + args.warmup)
        result = bench.measure(
            variants, args.repeats, args.warmup, args.compare_higher,
            on_round=lambda _: progress.advance(task),
        )
        grid = [
            config_from_args(args, algo=algo, holdout=line.name, k=k)
            for line in LINES for k in SWEEP_KS for algo in algorithms.available()
        ]
        calibrating = progress.add_task("calibrating the sweep estimate", total=None)
        runs = estimate.estimate_table(
            grid,
            known=estimate.known_costs(bench.costs(result, variants)),
            on_calibrate=lambda c: progress.update(calibrating, description=f"calibrating {c.algo} k={c.k}"),
        )
    result["sweep"] = {
        "runs": len(runs),
        "seconds": float(runs.seconds.sum()),
        "per_run": runs.groupby(["algo", "k", "source"], as_index=False).seconds.mean().to_dict("records"),
    }
    result["settings"]["preset"] = first.preset
    if args.json:
        print(json.dumps(result, default=float))
        return 0
    for table in tables(result):
        console.print(table)
    return 0


def tables(result: dict) -> list[Table]:
    """The bench result for people: meta-steps against B, the collapse detector, then throughput, the higher check
    and the estimate."""
    s = result["settings"]
    height, width = s["image_size"]
    caption = (
        f"medians over {s['repeats']} repeats after {s['warmup']} warm-up, one process, variants interleaved round by round; "
        f"{s['cpus']} CPUs, load average {s['load_average'][0]:.1f} before, {s['load_average'][1]:.1f} after"
    )
    steps = Table(
        title=f"meta-step cost · preset {s['preset']} · {s['tasks']} tasks x k={s['k']} (+{s['query_size']} query) "
        f"· {height}x{width} · {s['parameters']:,} parameters · {s['device']}, {s['threads']} threads",
        caption=escape(
            caption + "; x (n+1)B: per-round ratio, median [min, max]; FLOPs x (n+1)B: the meta-step's convolution and "
            f"matrix-product FLOPs over B's, the time ratio at B's speed per FLOP; memory: {s['memory_method']}"
        ),
    )
    for column in ("variant", "n", "task batching", "s / meta-step", "x (n+1)B", "FLOPs x (n+1)B", "peak extra MB"):
        steps.add_column(column, justify="left" if column == "variant" else "right")
    base = result["baseline"]
    steps.add_row(
        f"B: one forward-backward, {base['images']} images", "", "", f"{base['seconds']:.3f}", "",
        f"{base['flops'] / 1e9:.2f} GFLOP", "",
    )
    steps.add_row(
        f"B task by task: {s['tasks']} passes of {s['k']} images", "", "", f"{base['task_by_task_seconds']:.3f}",
        f"{base['task_by_task_ratio']:.2f} x B", "", "",
    )
    for row in result["meta_steps"]:
        if row["error"]:
            steps.add_row(row["variant"], str(row["inner_steps"]), row["task_batching"], row["error"], "", "", "")
            continue
        memory = "" if row["peak_mem_mb"] is None else f"{row['peak_mem_mb']:.0f}"
        steps.add_row(
            row["variant"], str(row["inner_steps"]), row["task_batching"], f"{row['seconds']:.3f}",
            escape(f"{row['ratio_to_n1B']:.2f} [{row['ratio_min']:.2f}, {row['ratio_max']:.2f}]"),
            f"{row['flops_to_n1B']:.2f}", memory,
        )

    return [steps, collapse_table(result), throughput_table(result, caption)]


def collapse_table(result: dict) -> Table:
    """Each variant's collapse detector: how much of the query images it predicts as cell before and after
    adapting, from its initial meta-state, on the evaluation episodes."""
    from benchmark.observations import COLLAPSE_FOREGROUND

    table = Table(
        "variant", "predicted cell, before -> after", f"episodes > {COLLAPSE_FOREGROUND:.0%} cell, before -> after",
        title="collapse detector",
        caption=escape(
            f"{result['evaluation']['episodes']} held-out evaluation episodes adapted from each variant's initial "
            "meta-state (bench trains nothing): the mean fraction of query pixels predicted cell; a model near 100% "
            "scores what the all-foreground reference does, whatever it has learnt"
        ),
    )
    for label, c in result["collapse"].items():
        table.add_row(label, f"{c['foreground_before']:.0%} -> {c['foreground_after']:.0%}", f"{c['before']} -> {c['after']} of {c['episodes']}")
    return table


def throughput_table(result: dict, caption: str) -> Table:
    """Evaluation and sampling throughput, the higher check and the sweep estimate."""
    other = Table("measure", "value", title="throughput and estimate", caption=caption)
    ev, data = result["evaluation"], result["data"]
    other.add_row(f"evaluation, {ev['episodes']} episodes adapted together", f"{ev['batched_eps_per_s']:.2f} episodes/s")
    other.add_row("evaluation, one episode at a time", f"{ev['one_by_one_eps_per_s']:.2f} episodes/s")
    other.add_row("  batched speed-up (per round)", f"{ev['speedup']:.2f}x")
    other.add_row("  max |IoU batched - one by one|", f"{ev['max_iou_diff']:.2g}")
    other.add_row("meta-batches sampled", f"{data['batches_per_s']:.2f} /s")
    other.add_row(f"meta-steps consumed (fastest: {data['fastest_variant']})", f"{data['meta_steps_per_s']:.2f} /s")
    other.add_row("  sampling headroom", f"{data['headroom']:.1f}x")
    if result.get("higher"):
        h = result["higher"]
        g = h["gradient"]
        other.add_row(f"{h['against']} / higher innerloop_ctx (per round)", f"{h['ours_over_higher_median']:.2f}x")
        other.add_row("  rounds where ours was faster", f"{h['rounds_ours_faster']} of {h['rounds']}")
        agree = "bitwise equal" if g["bitwise_equal"] else f"max |diff| {g['max_abs_diff']:.2g} (relative {g['relative']:.2g})"
        other.add_row("  meta-gradient against higher's", agree)
    if "sweep" in result:
        from benchmark.estimate import format_duration

        sweep = result["sweep"]
        other.add_row(f"sweep estimate: {sweep['runs']} runs, one after another", format_duration(sweep["seconds"]))
        for row in sweep["per_run"]:
            other.add_row(f"  one {row['algo']} run, k={row['k']} ({row['source']})", format_duration(row["seconds"]))
    return other
