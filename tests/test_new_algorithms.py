"""Meta-SGD, ANIL and MAML++: their meta-gradients against central differences of an independently written
meta-loss (float64), first-order MAML++ against detached inner gradients, vmap against loop, their schedules,
test-time adaptation with the learned rates and subsets, options and their errors, and a resumed run equal to an
uninterrupted one."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from algorithms import ModelConfig, build_model, create, load_checkpoint, save_checkpoint
from algorithms.losses import dice_loss
from algorithms.models import MODEL_NAMES
from algorithms.anil import OUTPUT_HEADS
from benchmark.cli import main
from benchmark.config import resolve
from benchmark.execute import execute
from benchmark.store import Store
from test_algorithms import disc_tasks
from test_maml_gradients import dot, float64_params, random_batch, rel_err, tiny_unet

INNER_STEPS, INNER_LR = 2, 0.4
NEW = ["meta-sgd", "anil", "maml++"]


def build(name, model, **hparams):
    """``name`` stepping plain SGD at rate 1 (MAML++'s cosine held there), so theta - theta' is the gradient."""
    fixed = {"inner_steps": INNER_STEPS, "inner_lr": INNER_LR, "outer_optimizer": "sgd", "outer_lr": 1.0}
    if name == "maml++":
        fixed["min_outer_lr"] = 1.0
    return create(name, model, **(fixed | hparams))


def meta_gradient(algo, state, batch):
    """The gradient a meta-step follows w.r.t. (params, extra), read back from one SGD step at rate 1."""
    new, _ = algo.meta_step(state, batch)
    return {k: state.params[k] - new.params[k] for k in state.params} | {k: state.extra[k] - new.extra[k] for k in state.extra}


def rates_of(name, extra, step, params):
    """Each parameter's inner rate at ``step`` as the paper defines it, read from ``extra`` (written out here,
    not through the algorithms' own rate functions)."""
    if name == "meta-sgd":
        return {k: extra[f"lr.{k}"] for k in params}
    if name == "maml++":
        return {k: extra[f"lr.{k}"][step] for k in params}
    return {k: INNER_LR if k.startswith("head.") else 0.0 for k in params}  # anil: the head only


def meta_loss(name, model, params, extra, batch, weights, second_order=True):
    """mean_t sum_j w_j L_query(phi_j^t), the inner loop written directly with torch.autograd."""
    total = 0.0
    for t in range(batch.tasks):
        fast = dict(params)
        for j, weight in enumerate(weights):
            support = dice_loss(model.apply(fast, batch.support_x[t]), batch.support_y[t])
            grads = torch.autograd.grad(support, list(fast.values()), create_graph=second_order, allow_unused=True)
            rates = rates_of(name, extra, j, fast)
            fast = {k: v - rates[k] * g if g is not None else v for (k, v), g in zip(fast.items(), grads)}
            if weight:
                total = total + weight * dice_loss(model.apply(fast, batch.query_x[t]), batch.query_y[t])
    return total / batch.tasks


def leaves(tensors):
    return {k: v.detach().clone().requires_grad_(True) for k, v in tensors.items()}


def start(name, model, **hparams):
    algo = build(name, model, **hparams)
    state = algo.init_state(float64_params(model))
    if state.extra:  # rates away from their initial value, so that a mix-up of rates would show
        g = torch.Generator().manual_seed(3)
        state.extra = {k: v * (0.5 + torch.rand(v.shape, generator=g, dtype=v.dtype)) for k, v in state.extra.items()}
    return algo, state


# -- meta-gradients --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, hparams", [("meta-sgd", {}), ("anil", {}), ("maml++", {"first_order_steps": 0, "multi_step_loss_steps": 4})]
)
@pytest.mark.parametrize("norm", ["group", "batch"])
def test_second_order_meta_gradient_matches_central_differences(name, hparams, norm):
    model, batch = tiny_unet(norm), random_batch()
    algo, state = start(name, model, **hparams)
    state.step = 2  # maml++: the multi-step loss half-way annealed
    weights = algo.loss_weights(state.step) if name == "maml++" else [0.0] * (INNER_STEPS - 1) + [1.0]
    assert name != "maml++" or 0 < weights[0] < weights[-1] < 1  # the multi-step loss is in play
    g = meta_gradient(algo, state, batch)
    both = state.params | state.extra
    gen, h = torch.Generator().manual_seed(1), 1e-6
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in both.items()}
        length = dot(direction, direction).sqrt()
        direction = {k: v / length for k, v in direction.items()}
        values = []
        for sign in (1, -1):
            moved = {k: v + sign * h * direction[k] for k, v in both.items()}
            params, extra = leaves({k: moved[k] for k in state.params}), {k: moved[k] for k in state.extra}
            values.append(meta_loss(name, model, params, extra, batch, weights, second_order=False).item())
        finite_difference = (values[0] - values[1]) / (2 * h)
        analytic = dot(g, direction).item()
        assert abs(finite_difference - analytic) / abs(finite_difference) < 1e-4, (finite_difference, analytic)


def test_mamlpp_first_order_phase_equals_detached_inner_gradients_and_differs_from_second_order():
    model, batch = tiny_unet("group"), random_batch(tasks=3)
    algo, state = start("maml++", model, first_order_steps=1, multi_step_loss_steps=4)
    first = meta_gradient(algo, state, batch)
    params, extra = leaves(state.params), leaves(state.extra)
    loss = meta_loss("maml++", model, params, extra, batch, algo.loss_weights(0), second_order=False)
    expected = dict(zip([*params, *extra], torch.autograd.grad(loss, [*params.values(), *extra.values()])))
    assert rel_err(first, expected) < 1e-10
    assert rel_err({k: first[k] for k in extra}, {k: torch.zeros_like(v) for k, v in extra.items()}) > 0  # rates learn
    second = meta_gradient(build("maml++", model, first_order_steps=0, multi_step_loss_steps=4), state, batch)
    assert rel_err(first, second) > 1e-2


@pytest.mark.parametrize(
    "name, hparams",
    [("meta-sgd", {}), ("anil", {}), ("maml++", {"first_order_steps": 0}), ("maml++", {"first_order_steps": 1})],
    ids=["meta-sgd", "anil", "maml++-second-order", "maml++-first-order"],
)
def test_vmap_over_tasks_equals_loop(name, hparams):
    model, batch = tiny_unet("batch"), random_batch(tasks=3)
    _, state = start(name, model)
    looped = meta_gradient(build(name, model, task_batching="loop", **hparams), state, batch)
    batched = meta_gradient(build(name, model, task_batching="vmap", **hparams), state, batch)
    assert rel_err(batched, looped) < 1e-12


# -- what each learns and adapts -------------------------------------------------------------------------


def test_mamlpp_schedules():
    algo = create("maml++", tiny_unet("group"), inner_steps=4, outer_lr=0.1, min_outer_lr=0.02, multi_step_loss_steps=10, meta_steps=20)
    assert algo.loss_weights(0) == [0.25] * 4
    assert algo.loss_weights(5) == pytest.approx([0.125, 0.125, 0.125, 0.625])
    assert algo.loss_weights(10) == algo.loss_weights(99) == [0.0, 0.0, 0.0, 1.0]
    assert all(sum(algo.loss_weights(s)) == pytest.approx(1) for s in range(12))
    assert create("maml++", tiny_unet("group"), inner_steps=3, multi_step_loss_steps=0).loss_weights(0) == [0.0, 0.0, 1.0]
    assert algo.outer_rate(0) == pytest.approx(0.1)
    assert algo.outer_rate(10) == pytest.approx(0.06)
    assert algo.outer_rate(20) == algo.outer_rate(25) == pytest.approx(0.02)


def test_mamlpp_steps_at_the_cosine_rate_and_counts_its_query_passes():
    model, batch = tiny_unet("group"), random_batch()
    algo, state = start("maml++", model, outer_lr=0.5, min_outer_lr=0.0, meta_steps=4, multi_step_loss_steps=1)
    for s, passes in enumerate([INNER_STEPS + INNER_STEPS, INNER_STEPS + 1]):
        grads = meta_gradient(build("maml++", model, multi_step_loss_steps=1), state, batch)
        new, metrics = algo.meta_step(state, batch)
        for k in state.params:
            torch.testing.assert_close(new.params[k], state.params[k] - algo.outer_rate(s) * grads[k], rtol=1e-12, atol=1e-14)
        assert new.optimizer["param_groups"][0]["lr"] == algo.outer_rate(s) and metrics["passes"] == passes
        state = new


@pytest.mark.parametrize("name", NEW)
def test_test_time_adaptation_uses_the_learned_rates_and_subset(name):
    model = build_model(ModelConfig(depth=2, width=4))
    algo = create(name, model, inner_steps=INNER_STEPS, inner_lr=INNER_LR, outer_lr=1e-2, task_batching="loop")
    state = algo.init_state(model.init(0))
    for step in range(2):
        state, _ = algo.meta_step(state, disc_tasks(2, 2, 2, seed=step))
    assert all(not torch.allclose(v, torch.full_like(v, INNER_LR)) for v in state.extra.values())  # rates learned
    batch = disc_tasks(2, 2, 2, seed=9)
    *_, (_, adapted) = algo.adapt(state, batch.support_x, batch.support_y)
    for e in range(2):
        fast = leaves(state.params)
        for j in range(INNER_STEPS):
            support = dice_loss(model.apply(fast, batch.support_x[e]), batch.support_y[e])
            grads = torch.autograd.grad(support, list(fast.values()))
            rates = rates_of(name, state.extra, j, fast)
            fast = leaves({k: v - rates[k] * g for (k, v), g in zip(fast.items(), grads)})
        for k in fast:
            torch.testing.assert_close(adapted[k][e], fast[k], rtol=1e-4, atol=1e-6)
    moved = {k for k in state.params if not torch.equal(adapted[k][0], state.params[k])}
    assert moved == ({"head.weight", "head.bias"} if name == "anil" else set(state.params))


def test_anil_adapts_named_layers_and_refuses_unknown_ones():
    model = build_model(ModelConfig(depth=2, width=4))
    assert create("anil", model).adaptation.parameters == ("head",)
    assert create("anil", model, adapted="head, dec0").adaptation.parameters == ("head", "dec0")
    with pytest.raises(ValueError, match=r"anil: adapted names haed match no parameter of model unet; its layers: .*head"):
        create("anil", model, adapted="head,haed")
    for bad in ("", " , ", 3):
        with pytest.raises(ValueError, match="anil: adapted must be"):
            create("anil", model, adapted=bad)
    assert set(OUTPUT_HEADS) == set(MODEL_NAMES)


@pytest.mark.parametrize(
    "hparams, message",
    [
        ({"inner_steps": 0}, "inner_steps must be >= 1"),
        ({"first_order_steps": -1}, "first_order_steps must be an integer >= 0"),
        ({"multi_step_loss_steps": 1.5}, "multi_step_loss_steps"),
        ({"meta_steps": 0}, "meta_steps must be an integer >= 1"),
        ({"min_outer_lr": 1.0, "outer_lr": 0.1}, r"min_outer_lr must be a number in \[0, outer_lr"),
    ],
)
def test_mamlpp_refuses_bad_options(hparams, message):
    with pytest.raises(ValueError, match=f"maml\\+\\+: {message}"):
        create("maml++", tiny_unet("group"), **hparams)


@pytest.mark.parametrize("name, hparams", [("meta-sgd", {}), ("anil", {"adapted": "head,dec0"}), ("maml++", {"first_order_steps": 7})])
def test_checkpoint_rebuilds_the_algorithm_and_its_learned_rates(tmp_path, name, hparams):
    model = build_model(ModelConfig(depth=2, width=4))
    algo = create(name, model, inner_steps=2, **hparams)
    state, _ = algo.meta_step(algo.init_state(model.init(0)), disc_tasks(2, 1, 1))
    save_checkpoint(tmp_path / "c.pt", algo, state)
    loaded, restored = load_checkpoint(tmp_path / "c.pt")
    assert type(loaded) is type(algo) and loaded.hparams() == algo.hparams()
    assert all(torch.equal(restored.extra[k], state.extra[k]) for k in state.extra) and set(restored.extra) == set(state.extra)


# -- end to end: run, resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options",
    [("meta-sgd", ()), ("anil", ()), ("maml++", (("first_order_steps", 1), ("multi_step_loss_steps", 3)))],
)
def test_interrupted_run_resumes_to_the_uninterrupted_result(synthetic_root, tmp_path, name, options):
    # maml++: the resumed half is second order, with the multi-step loss still annealing and the cosine rate
    config = resolve("smoke", data_root=str(synthetic_root), algo=name, meta_steps=4, checkpoint_every=2, algo_options=options)
    whole = Store(tmp_path / "whole")
    execute(config, whole)
    interrupted = Store(tmp_path / "interrupted")
    checkpoint = interrupted.checkpoint

    def stop_after_first_checkpoint(config_, algo, state, log):
        checkpoint(config_, algo, state, log)
        raise KeyboardInterrupt

    interrupted.checkpoint = stop_after_first_checkpoint
    with pytest.raises(KeyboardInterrupt):
        execute(config, interrupted)
    del interrupted.checkpoint
    assert execute(config, interrupted)["resumed_from"] == 2
    for file in ("episodes.csv.gz", "train_log.csv"):
        a = pd.read_csv(whole.run_dir(config.run_id) / file).drop(columns="wall_s", errors="ignore")
        b = pd.read_csv(interrupted.run_dir(config.run_id) / file).drop(columns="wall_s", errors="ignore")
        pd.testing.assert_frame_equal(a, b)
    a = torch.load(whole.run_dir(config.run_id) / "checkpoint.pt", weights_only=True)
    b = torch.load(interrupted.run_dir(config.run_id) / "checkpoint.pt", weights_only=True)
    for part in ("params", "extra"):
        assert set(a[part]) == set(b[part]) and all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert name == "anil" or a["extra"]  # the learned rates travel in the checkpoint


def test_a_bad_anil_option_is_a_one_line_error(synthetic_root, tmp_path, capsys):
    args = ["run", "--preset", "smoke", "--algo", "anil", "--opt", "adapted=tail", "--data-root", str(synthetic_root), "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "adapted names tail match no parameter" in err and "\n" not in err
    assert not list(Store(tmp_path).summaries())  # a run that cannot start leaves no record
