"""Fine-tune: the transfer-learning baseline.

No meta-learning: ordinary minibatch training of the same model with the same loss on the pooled
images of the training tasks, with the outer optimiser. At test time it adapts to a new task's
support set with the shared default adaptation (``Algorithm.adapt``: every parameter, n plain steps at
the inner rate); its training has no inner loop for that adaptation to match.

Budget matching. Each meta-step trains on the images of one meta-batch (T tasks, support and query
pooled: T * (k + q) images) with exactly the passes first-order MAML spends on that batch: n + 1
forward-backward passes, the first n on minibatches of T * k images and the last on T * q (as
first-order MAML's n inner passes over T support sets and one over T query sets), drawn in a random
order that covers the pool before repeating. So under the same settings both see the same number of
passes and images per meta-step (reported as ``passes`` and ``images``), and a run of S meta-steps
gives the baseline the same training budget as first-order MAML.
"""

from __future__ import annotations

import torch

from algorithms.base import Algorithm, MetaState
from algorithms.gradients import grad_and_loss
from algorithms.models import Model
from algorithms.registry import register
from tasks.batch import TaskBatch


@register("finetune")
class FineTune(Algorithm):
    """Minibatch training on the pooled images. ``seed`` fixes the minibatch order (together with the
    meta-step number, so a meta-step stays a function of state and batch). Other hyper-parameters:
    those of :class:`algorithms.base.Algorithm` (``inner_steps`` sets the budget, as above; the
    inner rate is used only at test time). ``task_batching`` must stay "auto": the pooled images have
    no task axis to batch over."""

    trains_by_adaptation = False  # ordinary training: no inner loop; adapts at test time with the shared default

    def __init__(self, model: Model, seed: int = 0, **hparams):
        super().__init__(model, **hparams)
        if self.task_batching != "auto":
            raise ValueError(f"finetune: task_batching must be auto (pooled images have no task axis), got {self.task_batching!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"finetune: seed must be an integer, got {seed!r}")
        self.seed = seed

    def hparams(self) -> dict:
        return super().hparams() | {"seed": self.seed}

    def resolved_task_batching(self, per_task=None) -> str:
        return "pooled"  # every task's images in one batch: there is no task axis to loop or vmap over

    def meta_step(self, state: MetaState, batch: TaskBatch) -> tuple[MetaState, dict[str, float]]:
        # 1. Pool every image of the meta-batch.
        images = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])  # [T * (k + q), 1, H, W]
        masks = torch.cat([batch.support_y.flatten(0, 1), batch.query_y.flatten(0, 1)])

        # 2. First-order MAML's pass schedule: n minibatches of T*k images, then one of T*q.
        tasks, k, q = batch.tasks, batch.support_x.shape[1], batch.query_x.shape[1]
        sizes = [tasks * k] * self.inner_steps + [tasks * q]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + state.step)
        rounds = -(-sum(sizes) // len(images))  # enough shuffled copies of the pool to draw from
        order = torch.cat([torch.randperm(len(images), generator=generator) for _ in range(rounds)]).to(images.device)

        # 3. Ordinary training: one optimiser step per minibatch.
        optimizer, params, extra = self.outer.open(state)
        losses, start = [], 0
        for size in sizes:
            pick = order[start : start + size]
            start += size
            grads, loss = grad_and_loss(self.loss_on, params, images[pick], masks[pick])
            losses.append(self.check_finite(loss, state))
            for name, leaf in params.items():
                leaf.grad = grads[name]
            optimizer.step()
        return self.outer.close(state, optimizer, params, extra), {
            "loss": sum(losses) / len(losses),  # mean minibatch loss over this meta-step
            "passes": len(sizes),
            "images": sum(sizes),
        }
