"""MAML (Finn, Abbeel & Levine, 2017), second order.

MAML meta-learns an initialisation theta from which a few gradient steps on a new task's support
set give weights that do well on that task's query set. For each task i of a meta-batch:

    phi_0 = theta
    phi_j = phi_{j-1} - alpha * grad L_support(phi_{j-1})         for j = 1..n   (the inner loop)
    L_i(theta) = L_query(phi_n)                                                   (the outer loss)

and the meta-update follows grad_theta mean_i L_i(theta) with the outer optimiser (Adam by default).
That gradient flows *through* the inner loop: each phi_j depends on theta through the inner
gradients too, so it involves second derivatives (Hessian-vector products) of the support loss.
Here that is exact: the inner gradients come from ``torch.func.grad`` on weights that still depend on
theta, so the outer differentiation (``Algorithm.meta_gradient``) goes through them. The inner loop's
activations of all n steps are kept for the outer backward pass, so memory grows linearly with n
(and with T when tasks are ``vmap``'d: ``task_batching="auto"`` loops).
"""

from __future__ import annotations

from torch.func import grad

from algorithms.base import Algorithm, MetaState, sgd_step
from algorithms.registry import register
from tasks.batch import TaskBatch


@register("maml")
class MAML(Algorithm):
    """Second-order MAML. Hyper-parameters: those of :class:`algorithms.base.Algorithm`."""

    second_order = True

    def meta_step(self, state: MetaState, batch: TaskBatch) -> tuple[MetaState, dict[str, float]]:
        # 1. The outer loss of one task, as a function of the meta-parameters (theta and, for
        #    algorithms that meta-learn them, the inner rates in `extra`).
        def query_loss_after_adaptation(params, extra, support_x, support_y, query_x, query_y):
            fast = params
            for j in range(self.inner_steps):
                # `fast` depends on params, and so does this gradient: the outer derivative sees it.
                inner_grads = grad(self.loss_on)(fast, support_x, support_y)
                fast = sgd_step(fast, inner_grads, self.step_size(extra, j))
            return self.loss_on(fast, query_x, query_y)

        # 2. Its gradient w.r.t. (params, extra), averaged over the tasks of the meta-batch.
        grad_params, grad_extra, loss = self.meta_gradient(query_loss_after_adaptation, state, tuple(batch))

        # 3. One step of the outer optimiser.
        loss = self.check_finite(loss, state)
        new_state = self.outer_update(state, grad_params, grad_extra)
        tasks, k, q = batch.tasks, batch.support_x.shape[1], batch.query_x.shape[1]
        return new_state, {
            "loss": loss,  # mean query loss after adaptation, before this update
            "passes": self.inner_steps + 1,  # n inner (each also differentiated twice) + 1 outer
            "images": tasks * (self.inner_steps * k + q),
        }
