"""MAML (Finn, Abbeel & Levine, 2017), second order.

MAML meta-learns an initialisation theta from which a few gradient steps on a new task's support
set give weights that do well on that task's query set. For each task i of a meta-batch:

    phi_0 = theta
    phi_j = phi_{j-1} - alpha * grad L_support(phi_{j-1})         for j = 1..n   (the inner loop)
    L_i(theta) = L_query(phi_n)                                                   (the outer loss)

and the meta-update follows grad_theta mean_i L_i(theta) with the outer optimiser (Adam by default).
That gradient flows *through* the inner loop: each phi_j depends on theta through the inner
gradients too, so it involves second derivatives (Hessian-vector products) of the support loss.
Here that is exact: the inner gradients are taken with ``create_graph`` on weights that still depend on
theta, so the outer differentiation (``Algorithm.meta_gradient``) goes through them.

Memory. The inner loop's activations of all n steps are kept for the outer backward pass, so memory
grows linearly with n (and with T when tasks are ``vmap``'d: see ``task_batching``). ``checkpoint_inner``
trades time for that memory: the first c inner steps are each wrapped in ``torch.utils.checkpoint``
(non-reentrant), so only the weights phi_j between them are kept and a step's activations are recomputed when
the outer backward pass reaches it; the last n - c steps keep theirs. The outer backward pass frees the kept
steps before it recomputes the first, so the peak holds about max(n - c, 1) steps of activations. Each
recomputed step costs one more forward-backward pass and one more forward pass: checkpointing keeps none of the
step's activations, so the step's own inner gradient, taken inside the region, already recomputes its forward
once. The gradient is the same, bit for bit. What that buys and costs on a given configuration:
``python -m benchmark bench --algos maml,maml:checkpoint_inner=true`` (seconds, FLOPs and peak memory per
meta-step).
"""

from __future__ import annotations

from torch.utils.checkpoint import checkpoint

from algorithms.base import Algorithm, MetaState
from algorithms.models import Model
from algorithms.registry import register
from tasks.batch import TaskBatch


@register("maml")
class MAML(Algorithm):
    """Second-order MAML. ``checkpoint_inner``: true, false, or how many of the first inner steps
    recompute their activations in the outer backward pass instead of keeping them (see the module
    docstring; needs tasks looped, which ``task_batching="auto"`` then does: ``torch.func`` transforms
    cannot checkpoint). Other hyper-parameters: those of :class:`algorithms.base.Algorithm`."""

    second_order = True

    def __init__(self, model: Model, checkpoint_inner: bool | int = False, **hparams):
        super().__init__(model, **hparams)
        if isinstance(checkpoint_inner, bool):
            recomputed = self.inner_steps if checkpoint_inner else 0
        elif isinstance(checkpoint_inner, int) and 0 <= checkpoint_inner <= self.inner_steps:
            recomputed = checkpoint_inner
        else:
            raise ValueError(
                f"maml: checkpoint_inner must be true, false or a number of inner steps 0..{self.inner_steps}, "
                f"got {checkpoint_inner!r}"
            )
        if recomputed and self.task_batching not in ("auto", "loop"):
            raise ValueError(f"maml: checkpoint_inner={checkpoint_inner} needs task_batching loop or auto, got {self.task_batching!r}")
        self.checkpoint_inner = checkpoint_inner
        self.recomputed_steps = recomputed

    def hparams(self) -> dict:
        return super().hparams() | {"checkpoint_inner": self.checkpoint_inner}

    def _auto_task_batching(self, per_task):
        return "loop" if self.recomputed_steps else super()._auto_task_batching(per_task)

    def meta_step(self, state: MetaState, batch: TaskBatch) -> tuple[MetaState, dict[str, float]]:
        # 1. One differentiable inner step: `fast` depends on params, and so does its gradient, so
        #    the outer derivative sees it (second order).
        def inner_step(fast, extra, j, support_x, support_y):
            return self.adaptation.step(self.loss_on, fast, extra, j, support_x, support_y, create_graph=True)[0]

        # 2. The outer loss of one task, as a function of the meta-parameters (theta and, for
        #    algorithms that meta-learn them, the inner rates in `extra`).
        def query_loss_after_adaptation(params, extra, support_x, support_y, query_x, query_y):
            fast = params
            for j in range(self.adaptation.steps):
                if j < self.recomputed_steps:  # keep phi_j only; recompute the step in the backward pass
                    fast = checkpoint(inner_step, fast, extra, j, support_x, support_y, use_reentrant=False)
                else:
                    fast = inner_step(fast, extra, j, support_x, support_y)
            return self.loss_on(fast, query_x, query_y)

        # 3. Its gradient w.r.t. (params, extra), averaged over the tasks of the meta-batch.
        grad_params, grad_extra, loss = self.meta_gradient(query_loss_after_adaptation, state, tuple(batch))

        # 4. One step of the outer optimiser.
        loss = self.check_finite(loss, state)
        new_state = self.outer_update(state, grad_params, grad_extra)
        tasks, k, q = batch.tasks, batch.support_x.shape[1], batch.query_x.shape[1]
        return new_state, {
            "loss": loss,  # mean query loss after adaptation, before this update
            "passes": self.inner_steps + 1,  # n inner (each also differentiated twice) + 1 outer
            "images": tasks * (self.inner_steps * k + q),
        }
