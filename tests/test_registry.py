"""The registry: names, construction, one-line errors, and outer optimisers from two libraries."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch_optimizer

from algorithms import Algorithm, ModelConfig, available, build_model, create, register
from algorithms import registry
from algorithms.optim import optimizer_class
from tasks.batch import TaskBatch


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(depth=1, width=2))


def test_package_import_lists_every_algorithm():
    out = subprocess.run(
        [sys.executable, "-c", "import algorithms; print(algorithms.available())"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "['anil', 'finetune', 'fomaml', 'maml', 'maml++', 'meta-sgd', 'reptile']"


@pytest.mark.parametrize("name", available())
def test_create_builds_the_named_class_and_hparams_rebuild_it(model, name):
    algo = create(name, model, inner_steps=3, inner_lr=0.1, outer_lr=5e-4)
    assert isinstance(algo, Algorithm) and algo.name == name
    assert algo.hparams()["inner_steps"] == 3 and algo.hparams()["outer_lr"] == 5e-4
    rebuilt = create(name, model, **algo.hparams())
    assert rebuilt.hparams() == algo.hparams()
    assert set(algo.hparams()) == set(registry.hyperparameters(name))


def test_unknown_algorithm_lists_the_valid_names(model):
    with pytest.raises(ValueError, match=r"unknown algorithm 'mamal'; available: anil, finetune, fomaml, maml, maml\+\+, meta-sgd, reptile"):
        create("mamal", model)


def test_unknown_hyperparameter_is_named(model):
    with pytest.raises(ValueError, match=r"'maml': unknown hyper-parameter\(s\) epsilon; valid: loss, inner_steps"):
        create("maml", model, epsilon=0.1)
    assert "epsilon" in registry.hyperparameters("reptile") and "seed" in registry.hyperparameters("finetune")


@pytest.mark.parametrize(
    "hparams, message",
    [
        ({"inner_steps": -1}, "inner_steps"),
        ({"inner_steps": 2.0}, "inner_steps"),
        ({"inner_lr": float("nan")}, "inner_lr"),
        ({"outer_lr": -1.0}, "outer_lr"),
        ({"task_batching": "chunked"}, "task_batching must be one of loop, vmap, auto"),
        ({"loss": "focal"}, "unknown loss 'focal'"),
        ({"outer_optimizer": "lbfgs"}, "needs a loss closure"),
    ],
)
def test_bad_hyperparameters_are_one_line_errors(model, hparams, message):
    with pytest.raises(ValueError, match=message) as err:
        create("fomaml", model, **hparams)
    assert "\n" not in str(err.value)


def test_outer_optimiser_names_from_torch_optim_and_torch_optimizer_case_insensitive():
    assert optimizer_class("Adam") is torch.optim.Adam
    assert optimizer_class("SGD") is optimizer_class("sgd") is torch.optim.SGD
    assert optimizer_class("radam") is torch.optim.RAdam  # torch.optim wins the clash
    assert optimizer_class("Yogi") is torch_optimizer.Yogi
    assert optimizer_class("lamb") is torch_optimizer.Lamb
    with pytest.raises(ValueError, match=r"unknown outer optimiser 'adamm'; valid \(case-insensitive\): .*adam, .*yogi"):
        optimizer_class("adamm")


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "yogi", "adabelief"])
def test_any_outer_optimiser_steps_and_keeps_its_state_in_the_metastate(model, optimizer):
    algo = create("fomaml", model, inner_steps=1, outer_optimizer=optimizer, outer_lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 1, 8, 8, generator=g)
    batch = TaskBatch(x, (x > 0.5).float(), x, (x > 0.5).float())
    state = algo.init_state(model.init(0))
    state, _ = algo.meta_step(state, batch)
    state, _ = algo.meta_step(state, batch)
    assert state.step == 2 and state.optimizer["param_groups"][0]["lr"] == 1e-2
    assert any(not torch.equal(state.params[k], v) for k, v in model.init(0).items())


def test_register_rejects_duplicates_and_non_algorithms(model):
    with pytest.raises(ValueError, match="already registered"):
        register("maml")(type("Other", (Algorithm,), {"meta_step": lambda self, s, b: (s, {})}))
    with pytest.raises(TypeError, match="Algorithm subclass"):
        register("not-an-algorithm")(object)
    assert "not-an-algorithm" not in available()


def test_a_registered_algorithm_is_created_by_name(model):
    @register("test-identity")
    class Identity(Algorithm):
        def meta_step(self, state, batch):
            return state, {"loss": 0.0, "passes": 0}

    try:
        assert "test-identity" in available()
        assert isinstance(create("test-identity", model), Identity) and Identity.name == "test-identity"
    finally:
        registry._REGISTRY.pop("test-identity")
