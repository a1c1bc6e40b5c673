"""First-order MAML (Finn et al., 2017, section 5.2).

The same meta-objective as MAML: for each task of a meta-batch, n plain gradient steps on the
support loss from theta,

    phi_0 = theta,   phi_j = phi_{j-1} - alpha * g_j,   g_j = grad L_support(phi_{j-1}),

then the loss on the query set L_query(phi_n). But the inner gradients g_j are treated as constants,
so d phi_n / d theta = I and the meta-gradient is simply grad L_query evaluated at phi_n:

    theta <- outer_optimiser(theta, mean_i grad L_query(phi_n^i)).

No second derivatives, no graph kept across inner steps: n + 1 ordinary forward-backward passes per
task, and memory of one pass. That makes ``vmap`` over tasks cheap in memory (``task_batching="auto"`` uses it
on accelerators; on CPU it loops, which was faster there).
"""

from __future__ import annotations

from algorithms.base import Algorithm, MetaState
from algorithms.gradients import grad_and_loss
from algorithms.registry import register
from tasks.batch import TaskBatch


@register("fomaml")
class FOMAML(Algorithm):
    """First-order MAML. Hyper-parameters: those of :class:`algorithms.base.Algorithm`."""

    def meta_step(self, state: MetaState, batch: TaskBatch) -> tuple[MetaState, dict[str, float]]:
        # 1. One task: adapt with plain gradient steps, then the query gradient at the adapted weights.
        def query_gradient_after_adaptation(params, extra, support_x, support_y, query_x, query_y):
            fast = params
            for j in range(self.adaptation.steps):
                fast, _ = self.adaptation.step(self.loss_on, fast, extra, j, support_x, support_y)  # g_j a constant
            return grad_and_loss(self.loss_on, fast, query_x, query_y)  # = the first-order meta-gradient

        # 2. Averaged over the tasks of the meta-batch.
        grad_params, loss = self.over_tasks(query_gradient_after_adaptation, (state.params, state.extra), tuple(batch))

        # 3. One step of the outer optimiser.
        loss = self.check_finite(loss, state)
        new_state = self.outer_update(state, grad_params)
        tasks, k, q = batch.tasks, batch.support_x.shape[1], batch.query_x.shape[1]
        return new_state, {
            "loss": loss,  # mean query loss after adaptation, before this update
            "passes": self.inner_steps + 1,  # n inner + 1 on the query set
            "images": tasks * (self.inner_steps * k + q),
        }
