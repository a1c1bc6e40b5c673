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
