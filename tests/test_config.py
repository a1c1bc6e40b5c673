"""Run configuration: presets, overrides, run ids and the errors a user can meet."""

from __future__ import annotations

import pytest

from benchmark.config import RunConfig, available_presets, resolve


def test_presets_ship_with_the_package():
    assert {"smoke", "default", "paper"} <= set(available_presets())


def test_layers_apply_in_order(tmp_path):
    user = tmp_path / "mine.toml"
    user.write_text('meta_steps = 7\ninner_lr = 0.1\n[algorithms.reptile]\nepsilon = 0.5\n')
    config = resolve("smoke", user, algo="reptile", inner_lr=0.2, holdout="skbr3")
    assert config.meta_steps == 7  # from the user's file over the preset
    assert config.inner_lr == 0.2  # the command line over both
    assert config.crop == 32  # from the preset
    assert config.holdout == "SkBr3"  # canonical spelling
    assert config.options == {"epsilon": 0.5}
    assert resolve("smoke", user, algo="maml").options == {}  # another algorithm's table is not applied


def test_run_id_depends_on_what_changes_numbers_only():
    a = resolve("smoke", algo="maml", holdout="MCF7")
    assert a.run_id == resolve("smoke", algo="maml", holdout="mcf7").run_id
    assert a.run_id != resolve("smoke", algo="maml", holdout="MCF7", seed=1).run_id
    assert a.run_id != resolve("smoke", algo="maml", holdout="MCF7", inner_lr=0.3).run_id
    assert a.run_id.startswith("maml-MCF7-k3-s0-")
    # the same settings reached through another preset are the same run
    same = RunConfig(**{**a.to_dict(), "algo_options": (), "preset": "mine"})
    assert same.run_id == a.run_id


def test_none_means_whole_images():
    assert resolve("paper", algo="maml").crop is None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda tmp: resolve("nope"), "unknown preset 'nope'; valid presets: default, long, paper, smoke"),
        (lambda tmp: resolve("smoke", tmp / "absent.toml"), "absent.toml: config file not found"),
        (lambda tmp: resolve("smoke", _write(tmp, "x = [")), "bad.toml: invalid TOML"),
        (lambda tmp: resolve("smoke", _write(tmp, "metasteps = 3")), "bad.toml: unknown setting 'metasteps'"),
        (lambda tmp: resolve("smoke", holdout="HeLa"), "unknown cell line 'HeLa'; valid lines: A172, BT-474"),
        (lambda tmp: resolve("smoke", k=0), "invalid value for k: 0 (must be >= 1)"),
        (lambda tmp: resolve("smoke", crop=4), "invalid value for crop: 4 (must be >= 8, or 'none' for whole images)"),
    ],
)
def test_errors_are_one_clear_line(tmp_path, call, message):
    with pytest.raises(ValueError) as err:
        call(tmp_path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def _write(tmp, text):
    path = tmp / "bad.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [("checkpoint_inner=true", ("checkpoint_inner", True)), ("epsilon=0.5", ("epsilon", 0.5)),
     ("task_batching=loop", ("task_batching", "loop")), ("inner_steps=5", ("inner_steps", 5))],
)
def test_option_values_read_as_toml(text, expected):
    from benchmark.commands.options import _option

    assert _option(text) == expected


# -- one declaration per setting ---------------------------------------------------------------------------------

ANOTHER = {  # a valid value other than the default, for the settings whose type alone does not give one
    "algo": "fomaml", "holdout": "A172", "model": "smp-vgg11", "norm": "batch", "encoder_weights": "imagenet",
    "loss": "bce", "outer_optimizer": "sgd", "task_batching": "loop", "device": "auto", "preset": "smoke",
    "data_root": "/tmp/elsewhere", "crop": 32, "adapt_rates": (0.1,), "algo_options": (("epsilon", 0.5),),
}


def test_every_declared_setting_reaches_the_cli_the_toml_reader_and_the_run_id(tmp_path):
    import argparse
    import dataclasses

    from benchmark.cli import build_parser
    from benchmark.config import FIELDS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {action.dest for action in sub.choices["run"]._actions}
    base = RunConfig()
    for name, f in FIELDS.items():
        assert f.metadata["help"], f"{name} has no help"
        assert name in flags, f"{name} has no flag of `run`"
        value = ANOTHER.get(name)
        if value is None:
            assert isinstance(f.default, (int, float)) and not isinstance(f.default, bool), f"add {name} to ANOTHER"
            value = type(f.default)(f.default + 1)
        changed = dataclasses.replace(base, **{name: value})
        assert (changed.run_id != base.run_id) == f.compare, f"{name}: run id {'unchanged' if f.compare else 'changed'}"
        if name not in ("algo_options", "preset"):  # TOML: [algorithms.NAME] tables, and --preset
            toml = tmp_path / f"{name}.toml"
            text = repr(list(value)) if isinstance(value, tuple) else repr(value).replace("'", '"')
            toml.write_text(f"{name} = {text}\n")
            assert getattr(resolve("default", toml), name) == changed.__getattribute__(name)
