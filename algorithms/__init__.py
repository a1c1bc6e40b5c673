"""Gradient-based meta-learners for few-shot segmentation, on a model written as pure functions.

The interface (see :mod:`algorithms.base`), used by the runner::

    model = build_model(ModelConfig(depth=3, width=16))
    algo = create("maml", model, inner_steps=10, inner_lr=0.4)   # available() lists the names
    state = algo.init_state(model.init(seed))                    # MetaState: params, extra, optimizer, step
    state, metrics = algo.meta_step(state, task_batch)           # metrics: "loss", "passes", "images"
    for step, params in algo.adapt(state, support_x, support_y): # E episodes at once, steps 0..n of
        logits = algo.predict(params, query_x)                   # algo.adaptation; [E, q, 1, H, W]
    algo.adapt(state, support_x, support_y, algo.adaptation.with_rate(0.1))  # another rate
    save_checkpoint(path, algo, state); algo, state = load_checkpoint(path)

One file per algorithm, each readable top to bottom: ``maml`` (second order), ``fomaml``
(first order), ``reptile``, ``finetune`` (the budget-matched transfer baseline), and the meta-learners the
field compares against: ``metasgd`` (learned per-parameter inner rates), ``anil`` (only the head adapts),
``mamlpp`` (MAML++). What they share:
``base`` (the interface), ``adaptation`` (the inner loop: which parameters, rates, steps), ``batching``
(tasks looped or vmapped), ``optim`` (the outer optimiser), ``gradients``, ``state`` (the MetaState).
"""

from algorithms.base import Algorithm, MetaState
from algorithms.models import ModelConfig, build_model
from algorithms.registry import available, create, register

# Importing an algorithm's module registers it.
from algorithms import anil, finetune, fomaml, maml, mamlpp, metasgd, reptile  # noqa: E402,F401  isort: skip
from algorithms.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402  isort: skip

__all__ = [
    "Algorithm",
    "MetaState",
    "ModelConfig",
    "available",
    "build_model",
    "create",
    "load_checkpoint",
    "register",
    "save_checkpoint",
]
