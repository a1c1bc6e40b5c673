"""Command-line options shared by ``run``, ``sweep`` and ``bench``: one flag per configuration setting."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import tomllib
from pathlib import Path
from typing import Any

from benchmark.config import (
    FIELDS, HELP, OPTIONAL, ConfigError, RunConfig, algorithm_table_sources, available_presets, resolve,
)

GRID = ("algo", "holdout", "k", "seed")  # what `sweep` varies; `run` takes them one at a time


def _parse_value(text: str) -> Any:
    """A value as TOML reads it (true, 0.5, 3, "x", [1, 2]); a bare word stays a string (loop)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), _parse_value(value.strip())


def _field_type(name: str):
    if name in OPTIONAL:  # 'none', or a value of the field's type
        return lambda text: text if text == "none" or OPTIONAL[name] is str else OPTIONAL[name](text)
    default = FIELDS[name].default
    if isinstance(default, tuple):
        return numbers
    return type(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else str


def numbers(text: str) -> tuple[float, ...]:
    """Comma-separated numbers (0.4,0.1); 'none' for none. (argparse names this function in its errors.)"""
    return () if text.strip() == "none" else tuple(float(v) for v in text.split(",") if v.strip())


def add_config_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """--preset, --config, one override flag per RunConfig field, and --opt for algorithm-specific settings."""
    parser.add_argument("--preset", default="default", help=f"named configuration: {', '.join(available_presets())} (default: default)")
    parser.add_argument(
        "--config", type=Path, metavar="FILE.toml",
        help="a TOML file of settings, applied over the preset; [algorithms.NAME] tables hold one algorithm's own settings",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    group = parser.add_argument_group("settings (override the preset and --config)")
    for name in FIELDS:
        if name in skip or name in ("algo_options", "preset"):
            continue
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, dest=name, type=_field_type(name), metavar=name.upper(), help=HELP[name])
    if "algo_options" in skip:
        return
    group.add_argument(
        "--opt", dest="algo_options", type=_option, action="append", metavar="KEY=VALUE",
        help="an algorithm-specific hyper-parameter, e.g. --opt epsilon=0.5 for reptile (repeatable)",
    )


@functools.lru_cache(maxsize=None)
def check_buildable(config: RunConfig) -> None:
    """Build the algorithm and model a configuration names (no data needed), so that an unknown algorithm,
    model, loss, optimiser or option fails at once with one line, not N runs later."""
    import algorithms
    from benchmark.runner import build

    if config.algo not in algorithms.available():
        raise ConfigError(f"unknown algorithm {config.algo!r}; valid algorithms: {', '.join(algorithms.available())}")
    build(config)


def config_from_args(args: argparse.Namespace, **grid: Any) -> RunConfig:
    """The configuration the command line asks for, with ``device="auto"`` resolved (it is part of the run id)."""
    overrides = {name: getattr(args, name, None) for name in FIELDS if name not in ("preset",)}
    overrides.update(grid)
    config = resolve(args.preset, args.config, **overrides)
    if config.device == "auto":
        import torch

        config = dataclasses.replace(config, device="cuda" if torch.cuda.is_available() else "cpu")
    try:
        check_buildable(dataclasses.replace(config, holdout=RunConfig.holdout, k=1, seed=0))
    except ValueError as err:  # name the file when the culprit is a setting of its [algorithms.NAME] table
        given_here = {key for key, _ in (getattr(args, "algo_options", None) or ())}
        sources = algorithm_table_sources(args.preset, args.config, config.algo)
        files = sorted({str(path) for key, path in sources.items() if key not in given_here and key in str(err)})
        if files:
            raise ConfigError(f"{', '.join(files)}: [algorithms.{config.algo}]: {err}") from None
        raise
    return config
