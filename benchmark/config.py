"""Run configuration: a frozen dataclass, filled from a preset TOML, a user TOML and CLI overrides.

A run is a pure function of its :class:`RunConfig`; the hash of the resolved configuration is the run id, so
a repeated run is recognised whatever preset or flags produced it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tasks.catalogue import LINES, cell_line

PRESET_DIR = Path(__file__).with_name("presets")


class ConfigError(ValueError):
    """A configuration that cannot be run: one line, naming the file or key."""


def setting(
    default: Any,
    help: str,
    *,
    valid: Callable[[Any], bool] | None = None,
    allowed: str = "",
    nullable: type | None = None,
    identity: bool = True,
    pooled: bool = False,
    part: str = "run",
) -> Any:
    """Declare one setting of :class:`RunConfig`, everything about it in one place, from which the CLI flag, the
    TOML reading, the checks, the run id and the report's pooling rule are derived:

    - ``help``: the flag's help text; ``valid``/``allowed``: a check of the value and what it allows (its error);
    - ``nullable``: the setting may be None ('none' in TOML and on the command line), else a value of this type;
    - ``identity``: part of the run id (it can change a number); False only for what changes no number;
    - ``pooled``: runs that differ in it may stand in one report (the grid, provenance);
    - ``part``: what it configures: ``algorithm`` settings are handed to every algorithm's constructor,
      ``model`` settings to the model's, ``run`` settings are the runner's.
    """
    metadata = {"help": help, "valid": valid, "allowed": allowed, "nullable": nullable, "pooled": pooled, "part": part}
    return field(default=default, compare=identity, metadata=metadata)


def _at_least(low: float) -> dict[str, Any]:
    return {"valid": lambda v: v >= low, "allowed": f">= {low:g}"}


POSITIVE = {"valid": lambda v: v > 0, "allowed": "> 0"}


@dataclass(frozen=True)
class RunConfig:
    # what is compared
    algo: str = setting("reptile", "algorithm name (see algorithms.available())", pooled=True)
    holdout: str = setting(
        "MCF7", "cell line held out of meta-training and evaluated on (any spelling: MCF7, mcf7, SH-SY5Y, shsy5y)",
        pooled=True,
    )
    k: int = setting(3, "support images per episode (shots), in meta-training and adaptation", pooled=True, **_at_least(1))
    seed: int = setting(0, "seed of initialisation, meta-training tasks and evaluation episodes", pooled=True, **_at_least(0))
    # data: None is the embedded synthetic LIVECell look-alike
    data_root: str | None = setting(
        None, "a LIVECell root in the official layout; 'none' = the embedded synthetic look-alike", nullable=str
    )
    crop: int | None = setting(
        64, "side of the square crops of every episode in pixels; 'none' = whole images", nullable=int,
        valid=lambda v: v is None or v >= 8, allowed=">= 8, or 'none' for whole images",
    )
    query_size: int = setting(3, "query images per meta-training task", **_at_least(1))
    # model
    model: str = setting(
        "unet", "backbone: 'unet' (hand-written functional U-Net) or 'smp-vgg11' (the seed's VGG-11 U-Net)", part="model"
    )
    depth: int = setting(3, "U-Net depth (down-sampling levels)", part="model")
    width: int = setting(16, "U-Net channels at the first level (doubled at each level)", part="model")
    norm: str = setting("group", "normalisation: group, batch (batch statistics only) or none", part="model")
    encoder_weights: str | None = setting(
        None, "smp-vgg11 encoder weights: 'none' or 'imagenet' (needs internet)", nullable=str, part="model"
    )
    # algorithm: the settings every algorithm takes (its own ones live in algo_options)
    loss: str = setting("dice", "segmentation loss: dice, bce or bce_dice", part="algorithm")
    inner_steps: int = setting(
        10, "adaptation steps n (inner loop in meta-training and at test time)", part="algorithm", **_at_least(0)
    )
    inner_lr: float = setting(0.4, "inner-loop / adaptation learning rate (plain gradient descent)", part="algorithm", **POSITIVE)
    outer_optimizer: str = setting("adam", "outer optimiser: any torch.optim or torch_optimizer name", part="algorithm")
    outer_lr: float = setting(1e-3, "outer learning rate", part="algorithm", **POSITIVE)
    task_batching: str = setting(
        "auto", "tasks of a meta-batch: loop, vmap, a chunk size, or auto (loop on CPU; on a GPU vmap where it fits)",
        part="algorithm",
    )
    meta_batch: int = setting(7, "tasks per meta-step", **_at_least(1))
    meta_steps: int = setting(100, "meta-training steps", **_at_least(0))
    algo_options: tuple[tuple[str, Any], ...] = setting(
        (), "the algorithm's own settings, declared by its constructor (--opt KEY=VALUE, [algorithms.NAME])",
        pooled=True,
    )
    # evaluation: identical episodes for every algorithm with the same seed, k and data
    eval_episodes: int = setting(40, "evaluation episodes on the held-out line", **_at_least(1))
    seen_episodes: int = setting(
        10, "evaluation episodes on each meta-training line's test split (0 = skip)", **_at_least(0)
    )
    eval_queries: int = setting(4, "query images per evaluation episode", **_at_least(1))
    eval_batch: int = setting(8, "evaluation episodes adapted together (vmap over episodes)", **_at_least(1))
    # fair adaptation and budget curves, both on validation episodes of the meta-training lines' val split
    adapt_rates: tuple[float, ...] = setting(
        (0.4, 0.2, 0.1, 0.05, 0.02, 0.01),
        "candidate test-time adaptation rates, comma-separated; each run selects one on validation episodes of its "
        "meta-training lines (never the held-out line) and is evaluated at it ('tuned' protocol) and at inner_lr "
        "('seed' protocol); 'none' = the seed protocol only",
        valid=lambda rates: all(rate > 0 for rate in rates), allowed="rates > 0, or 'none'",
    )
    validation_episodes: int = setting(
        16, "episodes from the meta-training lines' val split that select the adaptation rate and score the budget "
        "curve", **_at_least(1),
    )
    budget_every: int = setting(
        0, "meta-steps between points of the budget curve (validation IoU against meta-training spent); 0 = none",
        pooled=True, **_at_least(0),
    )
    # execution
    device: str = setting(
        "cpu", "cpu, cuda, cuda:N or auto", pooled=True,
        valid=lambda v: re.fullmatch(r"cpu|auto|cuda(:\d+)?|mps", v) is not None, allowed="cpu, cuda, cuda:N or auto",
    )
    threads: int = setting(
        1, "torch CPU threads of the run (default 1, so that sweep --jobs N shares N cores without oversubscribing "
        "them; part of the run id, since CPU results differ in the last bits with it)", pooled=True, **_at_least(1),
    )
    checkpoint_every: int = setting(
        25, "meta-steps between checkpoints (an interrupted run resumes from the last)", identity=False, pooled=True,
        **_at_least(1),
    )
    preset: str = setting("default", "the preset the configuration started from (provenance)", identity=False, pooled=True)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "algo_options":
                object.__setattr__(self, f.name, _checked(f.name, getattr(self, f.name)))
        object.__setattr__(self, "holdout", cell_line(self.holdout).name)
        if self.data_root is not None:
            object.__setattr__(self, "data_root", str(Path(self.data_root).expanduser().resolve()))
        for f in dataclasses.fields(self):
            valid = f.metadata["valid"]
            if valid is not None and not valid(getattr(self, f.name)):
                raise ConfigError(f"invalid value for {f.name}: {getattr(self, f.name)!r} (must be {f.metadata['allowed']})")

    @property
    def training_lines(self) -> list[str]:
        """The seven lines the run meta-trains on: every line but the held-out one."""
        return [line.name for line in LINES if line.name != self.holdout]

    def part(self, name: str) -> dict[str, Any]:
        """The settings of one part (``algorithm``, ``model``), by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["part"] == name}

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.algo_options)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["algo_options"] = self.options
        return d

    @property
    def data_identity(self) -> str:
        """What data the numbers come from: the real root's absolute path, or the synthetic generator's version."""
        if self.data_root is not None:
            return self.data_root
        from tasks.synth import GENERATOR_VERSION

        return f"synthetic-v{GENERATOR_VERSION}"

    @property
    def run_id(self) -> str:
        """Readable prefix plus a hash of every field that can change the numbers, of the data, and of the version
        of the code that computes them (:mod:`benchmark.numerics`)."""
        from benchmark import numerics

        identity = {f.name: v for f, v in zip(dataclasses.fields(self), dataclasses.astuple(self)) if f.compare}
        identity["algo_options"] = sorted(self.algo_options)
        identity["data_root"] = self.data_identity
        identity["numerics"] = numerics.NUMERICS_VERSION
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{self.algo}-{cell_line(self.holdout).prefix}-k{self.k}-s{self.seed}-{digest}"


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
HELP = {name: f.metadata["help"] for name, f in FIELDS.items()}
OPTIONAL = {name: f.metadata["nullable"] for name, f in FIELDS.items() if f.metadata["nullable"]}  # may be None
POOLED = tuple(name for name, f in FIELDS.items() if f.metadata["pooled"])  # may differ between a report's runs


def _checked(name: str, value: Any) -> Any:
    """``value`` as the type of field ``name`` (an int is a valid float), or a ConfigError naming the field."""
    kind = OPTIONAL.get(name) or type(FIELDS[name].default)
    if name in OPTIONAL and value in (None, "none"):  # TOML has no null: "none" stands for it
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is tuple:  # a list of numbers (TOML reads a list)
        numbers = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
        if not numbers:
            raise ConfigError(f"invalid value for {name}: {value!r} (expected a list of numbers)")
        return tuple(float(v) for v in value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"invalid value for {name}: {value!r} (expected {kind.__name__})")
    return value



def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    unknown = sorted(set(table) - set(FIELDS) - {"algorithms"})
    if unknown:
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r}")
    algorithms = table.get("algorithms", {})
    if not isinstance(algorithms, dict) or not all(isinstance(t, dict) for t in algorithms.values()):
        raise ConfigError(f"{path}: 'algorithms' must hold one [algorithms.NAME] table per algorithm")
    for name, value in table.items():
        if name != "algorithms":
            try:
                _checked(name, value)
            except ConfigError as err:
                raise ConfigError(f"{path}: {err}") from None
    return table


def algorithm_table_sources(preset: str, config_file: Path | None, algo: str) -> dict[str, Path]:
    """Which file set each of ``algo``'s own settings (the last one that named it), for errors that name it."""
    sources: dict[str, Path] = {}
    for path in [preset_path(preset)] + ([Path(config_file)] if config_file is not None else []):
        for key in read_toml(path).get("algorithms", {}).get(algo, {}):
            sources[key] = path
    return sources


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(available_presets())}")
    return path


def resolve(preset: str = "default", config_file: Path | None = None, **overrides: Any) -> RunConfig:
    """Preset, then the user's TOML, then explicit overrides (None means 'not given').

    Algorithm-specific settings live in ``[algorithms.<name>]`` tables; only the chosen algorithm's table is kept.
    """
    layers = [read_toml(preset_path(preset))]
    if config_file is not None:
        layers.append(read_toml(Path(config_file)))
    values: dict[str, Any] = {}
    per_algo: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for name, table in layer.pop("algorithms", {}).items():
            per_algo.setdefault(name, {}).update(table)
        values.update(layer)
    options = dict(overrides.pop("algo_options", None) or ())
    values.update({k: v for k, v in overrides.items() if v is not None})
    algo = values.get("algo", RunConfig.algo)
    merged_options = {**per_algo.get(algo, {}), **options}
    try:
        return RunConfig(**values, algo_options=tuple(sorted(merged_options.items())), preset=preset)
    except TypeError as err:
        raise ConfigError(f"invalid configuration: {err}") from None
