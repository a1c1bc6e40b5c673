"""Each algorithm's update against an independent computation, the fine-tune budget, adaptation (every
algorithm adapts at test time as its training inner loop did; the adaptation object's rate schedules,
learned rates, parameter subsets and overrides), error handling, and that every algorithm learns on tiny
synthetic tasks."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad

from algorithms import MetaState, ModelConfig, available, build_model, create
from algorithms.adaptation import Adaptation
from algorithms.reptile import Reptile
from tasks.batch import TaskBatch


def disc_tasks(tasks: int, k: int, q: int, size: int = 16, seed: int = 0) -> TaskBatch:
    """Bright discs on noise; each task has its own disc radius and contrast (a 'cell line')."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")

    def image_set(n, radius, contrast):
        masks = torch.zeros(n, 1, size, size)
        for i in range(n):
            for _ in range(int(torch.randint(1, 4, (), generator=g))):
                cy, cx = torch.randint(0, size, (2,), generator=g)
                disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).float()
                masks[i, 0] = torch.maximum(masks[i, 0], disc)
        return (0.3 * torch.rand(n, 1, size, size, generator=g) + contrast * masks).clamp(0, 1), masks

    sets = []
    for _ in range(tasks):
        radius = 1.5 + 2.5 * float(torch.rand((), generator=g))
        contrast = 0.3 + 0.5 * float(torch.rand((), generator=g))
        sets.append((*image_set(k, radius, contrast), *image_set(q, radius, contrast)))
    return TaskBatch(*(torch.stack(parts) for parts in zip(*sets)))


@pytest.fixture(scope="module")
def small_unet():
    return build_model(ModelConfig(depth=2, width=4))


def adapted_query_loss(algo, state, batch: TaskBatch) -> float:
    *_, (_, params) = algo.adapt(state, batch.support_x, batch.support_y)
    logits = algo.predict(params, batch.query_x)
    return algo.loss_fn(logits.flatten(0, 1), batch.query_y.flatten(0, 1)).item()


# -- every algorithm learns ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, hparams",
    [("maml", {}), ("fomaml", {}), ("reptile", {}), ("reptile", {"epsilon": 0.5}), ("finetune", {}), ("meta-sgd", {}),
     ("anil", {}), ("maml++", {})],
)
def test_meta_training_lowers_query_loss_after_adaptation(small_unet, name, hparams):
    rates = {} if "epsilon" in hparams else {"outer_lr": 1e-2}
    batching = {} if name == "finetune" else {"task_batching": "vmap"}  # tiny tasks: vmap is fastest
    algo = create(name, small_unet, inner_steps=3, **rates, **batching, **hparams)
    held_out = disc_tasks(8, 2, 2, seed=999)
    state = algo.init_state(small_unet.init(0))
    before = adapted_query_loss(algo, state, held_out)
    for step in range(6):
        state, metrics = algo.meta_step(state, disc_tasks(4, 2, 2, seed=step))
    after = adapted_query_loss(algo, state, held_out)
    assert state.step == 6
    assert after < before - 0.05, (before, after)


# -- Reptile: the analytic update on quadratic task losses ----------------------------------------


class QuadraticReptile(Reptile):
    """Reptile whose 'model' is the parameter vector itself: loss(w; x) = a/2 * sum (w - mean(x))^2."""

    CURVATURE = 1.5

    def loss_on(self, params, x, y):
        return 0.5 * self.CURVATURE * sum(((w - x.mean()) ** 2).sum() for w in params.values())


def quadratic_tasks(support_values, query_values, k=2):
    """Tasks whose images are constant: value s_t in the support set, q_t in the query set."""
    shape = (1, k, 1, 4, 4)
    support = torch.cat([torch.full(shape, v, dtype=torch.float64) for v in support_values])
    query = torch.cat([torch.full(shape, v, dtype=torch.float64) for v in query_values])
    return TaskBatch(support, torch.zeros_like(support), query, torch.zeros_like(query))


@pytest.mark.parametrize("task_batching", ["loop", "vmap"])
def test_reptile_equals_closed_form_on_quadratic_losses(small_unet, task_batching):
    # Every step of task t pulls toward c_t: phi_t = c_t + r^n (theta - c_t), r = 1 - alpha * a, so
    # theta' = theta + eps * mean_t (phi_t - theta) = theta + eps * (1 - r^n) * (mean_t c_t - theta).
    n, alpha, eps = 4, 0.3, 0.7
    c = torch.tensor([0.2, -1.0, 3.0], dtype=torch.float64)
    theta = {"w": torch.tensor([0.5, -0.25], dtype=torch.float64), "b": torch.tensor([2.0], dtype=torch.float64)}
    algo = QuadraticReptile(small_unet, inner_steps=n, inner_lr=alpha, epsilon=eps, task_batching=task_batching)
    state, metrics = algo.meta_step(algo.init_state(theta), quadratic_tasks(c.tolist(), c.tolist()))
    r = 1 - alpha * QuadraticReptile.CURVATURE
    for name, w in theta.items():
        expected = w + eps * (1 - r**n) * (c.mean() - w)
        torch.testing.assert_close(state.params[name], expected, rtol=1e-12, atol=1e-12)
    assert metrics["passes"] == n


def test_reptile_steps_alternate_support_and_query_and_optimizer_path_matches():
    # k = q: inner steps alternate support (s_t), query (q_t): phi <- c + r (phi - c) with c = s, q, s, ...
    n, alpha, lr = 3, 0.2, 0.4
    s, q = [1.0, -2.0], [0.5, 4.0]
    theta = {"w": torch.tensor([0.3, 0.1], dtype=torch.float64)}
    model = build_model(ModelConfig(depth=1, width=1))
    algo = QuadraticReptile(model, inner_steps=n, inner_lr=alpha, outer_optimizer="sgd", outer_lr=lr)
    state, _ = algo.meta_step(algo.init_state(theta), quadratic_tasks(s, q))
    r = 1 - alpha * QuadraticReptile.CURVATURE
    adapted = []
    for s_t, q_t in zip(s, q):
        phi = theta["w"].clone()
        for j in range(n):
            target = s_t if j % 2 == 0 else q_t
            phi = target + r * (phi - target)
        adapted.append(phi)
    # Through plain SGD at rate lr on the "gradient" theta - mean(phi): theta + lr * (mean(phi) - theta).
    expected = theta["w"] + lr * (torch.stack(adapted).mean(0) - theta["w"])
    torch.testing.assert_close(state.params["w"], expected, rtol=1e-12, atol=1e-12)


def test_reptile_epsilon_replaces_the_outer_optimiser_by_plain_sgd_at_that_rate(small_unet):
    algo = create("reptile", small_unet, epsilon=0.5, outer_optimizer="adam", outer_lr=1e-2)
    assert (algo.hparams()["outer_optimizer"], algo.hparams()["outer_lr"], algo.hparams()["epsilon"]) == ("sgd", 0.5, 0.5)
    rebuilt = create("reptile", small_unet, **algo.hparams())  # what a checkpoint does
    assert rebuilt.hparams() == algo.hparams()
    for bad in (1.5, 0, True, "x"):
        with pytest.raises(ValueError, match="epsilon"):
            create("reptile", small_unet, epsilon=bad)
    with pytest.raises(ValueError, match="inner_steps"):
        create("reptile", small_unet, inner_steps=0)


# -- fine-tune: trains, and spends first-order MAML's budget --------------------------------------


def test_finetune_lowers_pooled_loss_with_fomaml_budget(small_unet):
    algo = create("finetune", small_unet, inner_steps=4, outer_lr=1e-2)
    fomaml = create("fomaml", small_unet, inner_steps=4)
    batch = disc_tasks(3, 2, 3, seed=5)  # q != k: the last minibatch has T * q images
    images = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
    masks = torch.cat([batch.support_y.flatten(0, 1), batch.query_y.flatten(0, 1)])
    state = algo.init_state(small_unet.init(0))
    before = algo.loss_on(state.params, images, masks).item()
    for _ in range(3):
        state, metrics = algo.meta_step(state, batch)
    assert algo.loss_on(state.params, images, masks).item() < before - 0.02
    _, fomaml_metrics = fomaml.meta_step(fomaml.init_state(small_unet.init(0)), batch)
    assert metrics["passes"] == fomaml_metrics["passes"] == 5
    assert metrics["images"] == fomaml_metrics["images"] == 3 * (4 * 2 + 3)


def test_finetune_minibatches_depend_on_seed_and_step_only(small_unet):
    batch = disc_tasks(2, 2, 2, seed=1)
    params = small_unet.init(0)
    runs = []
    for seed in (0, 0, 1):
        algo = create("finetune", small_unet, inner_steps=2, seed=seed)
        runs.append(algo.meta_step(algo.init_state(params), batch)[0].params)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in params)
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in params)


# -- the shared interface ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "finetune"])
def test_meta_step_is_pure_and_reports_its_cost(small_unet, name):
    algo = create(name, small_unet, inner_steps=2)
    batch = disc_tasks(2, 1, 2, seed=3)
    state = algo.init_state(small_unet.init(0))
    snapshot = {k: v.clone() for k, v in state.params.items()}
    new_state, metrics = algo.meta_step(state, batch)
    assert state.step == 0 and state.optimizer == {}
    assert all(torch.equal(state.params[k], snapshot[k]) for k in snapshot)
    assert new_state.step == 1 and new_state.optimizer  # Adam's moments travel in the state
    assert {"loss", "passes", "images"} <= set(metrics)
    assert metrics["passes"] == (2 if name == "reptile" else 3)
    # the optimiser state is read back: a second step from new_state differs from one from a fresh state
    again, _ = algo.meta_step(new_state, batch)
    fresh, _ = algo.meta_step(MetaState(new_state.params, {}, {}, 1), batch)
    assert not all(torch.equal(again.params[k], fresh.params[k]) for k in snapshot)


def test_adapt_batched_over_episodes_equals_one_by_one(small_unet):
    algo = create("fomaml", small_unet, inner_steps=3)
    batch = disc_tasks(3, 2, 2, seed=7)
    state = algo.init_state(small_unet.init(1))
    together = list(algo.adapt(state, batch.support_x, batch.support_y))
    assert [step for step, _ in together] == [0, 1, 2, 3]
    for e in range(3):
        fast = dict(state.params)
        for step in range(1, 4):
            grads = grad(algo.loss_on)(fast, batch.support_x[e], batch.support_y[e])
            fast = {k: v - 0.4 * grads[k] for k, v in fast.items()}
            for k in fast:
                torch.testing.assert_close(together[step][1][k][e], fast[k], rtol=1e-5, atol=1e-6)
    logits = algo.predict(together[-1][1], batch.query_x)
    assert logits.shape == batch.query_x.shape
    torch.testing.assert_close(logits[1], small_unet.apply({k: v[1] for k, v in together[-1][1].items()}, batch.query_x[1]))


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "finetune"])
def test_non_finite_loss_is_a_one_line_error(small_unet, name):
    algo = create(name, small_unet, inner_steps=1)
    batch = disc_tasks(2, 1, 1, seed=0)
    poisoned = TaskBatch(batch.support_x * float("nan"), *batch[1:])
    with pytest.raises(FloatingPointError, match=rf"^{name}: loss is nan at meta-step 0"):
        algo.meta_step(algo.init_state(small_unet.init(0)), poisoned)
    with pytest.raises(FloatingPointError, match="adaptation step 1"):
        list(algo.adapt(algo.init_state(small_unet.init(0)), poisoned.support_x, poisoned.support_y))


def test_all_four_are_registered():
    assert {"maml", "fomaml", "reptile", "finetune"} <= set(available())


# -- adaptation: test time is the training inner loop -------------------------------------------------


def float64(params):
    return {k: v.double() for k, v in params.items()}


class Recorder:
    """An adaptation that remembers the weights after each of its steps (what a training inner loop made)."""

    def __init__(self, adaptation: Adaptation):
        self.adaptation, self.weights = adaptation, []

    def __getattr__(self, name):
        return getattr(self.adaptation, name)

    def step(self, *args, **kwargs):
        params, loss = self.adaptation.step(*args, **kwargs)
        self.weights.append({k: v.detach().clone() for k, v in params.items()})
        return params, loss


SPECIALISED = Adaptation(steps=3, rate=(0.1, 0.3, 0.2), parameters=("head", "dec0"))


@pytest.mark.parametrize("specialised", [False, True], ids=["default", "specialised"])
@pytest.mark.parametrize("name", available())
def test_test_time_adaptation_is_the_training_inner_loop(small_unet, name, specialised):
    batching = {} if name == "finetune" else {"task_batching": "loop"}
    algo = create(name, small_unet, inner_steps=3, **batching)
    if not algo.trains_by_adaptation:  # no inner loop in training: it adapts with the shared default
        assert algo.adaptation == Adaptation(steps=3, rate=algo.inner_lr)
        return
    if specialised:
        algo.adaptation = SPECIALISED
    tasks = disc_tasks(1, 2, 2, seed=4)
    # query = support: the task is its support set for every algorithm (Reptile trains on support + query)
    batch = type(tasks)(*(t.double() for t in (tasks.support_x, tasks.support_y, tasks.support_x, tasks.support_y)))
    state = algo.init_state(float64(small_unet.init(0)))
    recorder = Recorder(algo.adaptation)
    algo.adaptation = recorder
    algo.meta_step(state, batch)
    algo.adaptation = recorder.adaptation
    assert len(recorder.weights) == algo.adaptation.steps
    trained = recorder.weights[-1]
    *_, (_, adapted) = algo.adapt(state, batch.support_x, batch.support_y)
    for k in trained:
        torch.testing.assert_close(adapted[k][0], trained[k], rtol=1e-10, atol=1e-12)
    moved = {k for k in trained if not torch.equal(trained[k], state.params[k])}
    assert moved == {k for k in trained if algo.adaptation.adapts(k)}


def manual_adaptation(algo, params, x, y, rates, adapts=lambda name: True):
    fast = dict(params)
    for rate in rates:
        grads = grad(algo.loss_on)(fast, x, y)
        fast = {k: v - rate * grads[k] if adapts(k) else v for k, v in fast.items()}
    return fast


def test_override_rate_schedule_and_parameter_subset(small_unet):
    algo = create("fomaml", small_unet, inner_steps=2)
    batch = disc_tasks(2, 2, 2, seed=1)
    state = algo.init_state(small_unet.init(0))
    cases = [
        (algo.adaptation.with_rate(0.1), [0.1, 0.1], lambda k: True),
        (Adaptation(3, rate=(0.2, 0.0, 0.5)), [0.2, 0.0, 0.5], lambda k: True),
        (Adaptation(2, rate=0.4, parameters=("head",)), [0.4, 0.4], lambda k: k.startswith("head.")),
    ]
    for adaptation, rates, adapts in cases:
        steps = list(algo.adapt(state, batch.support_x, batch.support_y, adaptation))
        assert [i for i, _ in steps] == list(range(len(rates) + 1))
        for e in range(2):
            expected = manual_adaptation(algo, state.params, batch.support_x[e], batch.support_y[e], rates, adapts)
            for k in expected:
                torch.testing.assert_close(steps[-1][1][k][e], expected[k], rtol=1e-5, atol=1e-6)
    assert algo.adaptation == Adaptation(2, rate=0.4)  # an override leaves the algorithm's own untouched


def test_learned_per_parameter_rates_come_from_the_meta_state(small_unet):
    """The hook for meta-learned rates (Meta-SGD): the schedule reads them from MetaState.extra."""
    algo = create("fomaml", small_unet, inner_steps=1)
    algo.adaptation = Adaptation(1, rate=lambda extra, step: {k[len("lr."):]: v for k, v in extra.items()})
    batch = disc_tasks(1, 2, 2, seed=2)
    params = small_unet.init(0)
    state = MetaState(params, {f"lr.{k}": torch.full_like(v, 0.1) for k, v in params.items()}, {}, 0)
    (_, start), (_, adapted) = algo.adapt(state, batch.support_x, batch.support_y)
    grads = grad(algo.loss_on)(params, batch.support_x[0], batch.support_y[0])
    for k in grads:
        torch.testing.assert_close(adapted[k][0], params[k] - 0.1 * grads[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("task_batching", ["loop", "vmap"])
def test_second_order_meta_gradient_reaches_learned_rates(small_unet, task_batching):
    """Rates read from MetaState.extra are meta-parameters: second-order MAML's outer step moves them, and the
    gradient it follows agrees with a finite difference of the meta-objective in float64."""
    algo = create("maml", small_unet, inner_steps=2, outer_optimizer="sgd", outer_lr=1.0, task_batching=task_batching)
    algo.adaptation = Adaptation(2, rate=lambda extra, step: extra["lr"] * (step + 1))  # one learned rate, per-step scaled
    batch = TaskBatch(*(t.double() for t in disc_tasks(2, 2, 2, seed=6)))
    params = float64(small_unet.init(0))
    state = MetaState(params, {"lr": torch.tensor(0.2, dtype=torch.float64)}, {}, 0)
    new_state, _ = algo.meta_step(state, batch)
    moved = float(state.extra["lr"] - new_state.extra["lr"])  # outer SGD at rate 1: the meta-gradient w.r.t. lr

    def meta_objective(lr: float) -> float:
        total = 0.0
        for t in range(batch.tasks):
            fast = params
            for j in range(2):
                grads = grad(algo.loss_on)(fast, batch.support_x[t], batch.support_y[t])
                fast = {k: v - lr * (j + 1) * grads[k] for k, v in fast.items()}
            total += float(algo.loss_on(fast, batch.query_x[t], batch.query_y[t])) / batch.tasks
        return total

    h = 1e-6
    assert moved != 0
    assert moved == pytest.approx((meta_objective(0.2 + h) - meta_objective(0.2 - h)) / (2 * h), rel=1e-4)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"steps": -1, "rate": 0.1}, "steps"),
        ({"steps": 2, "rate": float("nan")}, "rate"),
        ({"steps": 2, "rate": (0.1,)}, "2 rates"),
        ({"steps": 1, "rate": (lambda extra, step: 0.1,)}, "rate"),
        ({"steps": 2, "rate": 0.1, "parameters": "head"}, "tuple"),
    ],
)
def test_bad_adaptation_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        Adaptation(**settings)


def test_parameters_that_match_nothing_are_an_error(small_unet):
    algo = create("fomaml", small_unet, inner_steps=1)
    batch = disc_tasks(1, 1, 1, seed=0)
    with pytest.raises(ValueError, match="no parameter matches"):
        list(algo.adapt(algo.init_state(small_unet.init(0)), batch.support_x, batch.support_y, Adaptation(1, 0.1, ("tail",))))
