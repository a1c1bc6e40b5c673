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

Collapse. With the soft-Dice loss and a few steps at a large inner rate, adaptation from a random init pushes
predictions to all foreground, the meta-gradient then spikes through the second-order terms, and Adam settles
theta into predicting every pixel as cell (docs/maml-collapse.md has the mechanism and the measurements). The
options against it, all off by default: ``init_foreground`` (start from an output bias whose predicted
foreground fraction is the given prior, e.g. the training crops' mean cell cover), ``outer_beta2`` (a shorter
memory for Adam's second moment, so a spike stops shrinking the steps after it), ``clip_norm`` (clip the
meta-gradient's global norm) and ``multi_step_loss`` (MAML++'s query loss after every inner step, its weights
annealed to the last step over that many meta-steps).
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from algorithms.base import Algorithm, MetaState
from algorithms.models import Model
from algorithms.registry import register
from tasks.batch import TaskBatch


def multi_step_weights(steps: int, span: int, meta_step: int) -> list[float]:
    """MAML++'s multi-step loss weights of the query losses after inner steps 1..n at ``meta_step``: 1/n each
    at first, annealed linearly over ``span`` meta-steps to the last step alone (``span`` 0: the last from the
    start; one step: that step alone). One formula for ``maml``'s option and ``maml++``."""
    early = max(0.0, 1.0 - meta_step / span) / steps if span and steps > 1 else 0.0
    return [early] * (steps - 1) + [1.0 - (steps - 1) * early]


@register("maml")
class MAML(Algorithm):
    """Second-order MAML. ``checkpoint_inner``: true, false, or how many of the first inner steps
    recompute their activations in the outer backward pass instead of keeping them (see the module
    docstring; needs tasks looped, which ``task_batching="auto"`` then does: ``torch.func`` transforms
    cannot checkpoint). Against collapse (module docstring; all off by default):

    - ``init_foreground`` p in (0, 1): the output bias starts at logit(p), a prior foreground probability (the
      thresholded fraction at init also depends on the random head weights; the model's one bias of shape (1,) is
      the output bias);
    - ``outer_beta2``: Adam's beta2 (its default 0.999 remembers a gradient spike for ~1000 steps);
    - ``clip_norm`` > 0: the meta-gradient (theta and ``extra`` together) is scaled to at most this global norm;
    - ``multi_step_loss`` A > 0: the outer loss is sum_j w_j L_query(phi_j) over the inner steps j = 1..n, with
      w_j = (1 - s/A)/n for j < n at meta-step s (0 from s = A on) and w_n the rest (MAML++, Antoniou et al.
      2019); each step's query loss costs one more differentiated forward pass on the query set.

    Other hyper-parameters: those of :class:`algorithms.base.Algorithm`."""

    second_order = True

    def __init__(
        self,
        model: Model,
        checkpoint_inner: bool | int = False,
        init_foreground: float | None = None,
        outer_beta2: float | None = None,
        clip_norm: float | None = None,
        multi_step_loss: int = 0,
        **hparams,
    ):
        super().__init__(model, **hparams)
        if init_foreground is not None and not (isinstance(init_foreground, (int, float)) and 0 < init_foreground < 1):
            raise ValueError(f"maml: init_foreground must be a fraction in (0, 1) or none, got {init_foreground!r}")
        if outer_beta2 is not None:
            if not (isinstance(outer_beta2, (int, float)) and 0 <= outer_beta2 < 1):
                raise ValueError(f"maml: outer_beta2 must be in [0, 1) or none, got {outer_beta2!r}")
            if "betas" not in self.outer.cls.__init__.__code__.co_varnames:
                raise ValueError(f"maml: outer_beta2 needs an Adam-like outer optimiser, got {self.outer_optimizer!r}")
            self.outer = type(self.outer)(self.outer.cls, self.outer_lr, (("betas", (0.9, float(outer_beta2))),))
        if clip_norm is not None and not (isinstance(clip_norm, (int, float)) and clip_norm > 0):
            raise ValueError(f"maml: clip_norm must be > 0 or none, got {clip_norm!r}")
        if isinstance(multi_step_loss, bool) or not isinstance(multi_step_loss, int) or multi_step_loss < 0:
            raise ValueError(f"maml: multi_step_loss must be a number of meta-steps >= 0 (0 = off), got {multi_step_loss!r}")
        self.init_foreground = init_foreground
        self.outer_beta2 = outer_beta2
        self.clip_norm = clip_norm
        self.multi_step_loss = multi_step_loss
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
        return super().hparams() | {
            "checkpoint_inner": self.checkpoint_inner,
            "init_foreground": self.init_foreground,
            "outer_beta2": self.outer_beta2,
            "clip_norm": self.clip_norm,
            "multi_step_loss": self.multi_step_loss,
        }

    def init_state(self, params):
        state = super().init_state(params)
        if self.init_foreground is not None:
            (name,) = [k for k, v in state.params.items() if k.endswith("bias") and tuple(v.shape) == (1,)] or [None]
            if name is None:
                raise ValueError("maml: init_foreground needs a model with one output bias of shape (1,)")
            p = self.init_foreground
            state.params[name] = torch.full_like(state.params[name], math.log(p / (1 - p)))
        return state

    def step_weights(self, meta_step: int) -> list[float]:
        """Weights of the query losses after inner steps 1..n at ``meta_step`` (the last one only when off)."""
        return multi_step_weights(self.adaptation.steps, self.multi_step_loss, meta_step)

    def _auto_task_batching(self, per_task):
        return "loop" if self.recomputed_steps else super()._auto_task_batching(per_task)

    def meta_step(self, state: MetaState, batch: TaskBatch) -> tuple[MetaState, dict[str, float]]:
        # 1. One differentiable inner step: `fast` depends on params, and so does its gradient, so
        #    the outer derivative sees it (second order).
        def inner_step(fast, extra, j, support_x, support_y):
            return self.adaptation.step(self.loss_on, fast, extra, j, support_x, support_y, create_graph=True)[0]

        # 2. The outer loss of one task, as a function of the meta-parameters (theta and, for
        #    algorithms that meta-learn them, the inner rates in `extra`).
        weights = self.step_weights(state.step)

        def query_loss_after_adaptation(params, extra, support_x, support_y, query_x, query_y):
            fast, earlier = params, 0.0
            for j in range(self.adaptation.steps):
                if j < self.recomputed_steps:  # keep phi_j only; recompute the step in the backward pass
                    fast = checkpoint(inner_step, fast, extra, j, support_x, support_y, use_reentrant=False)
                else:
                    fast = inner_step(fast, extra, j, support_x, support_y)
                if j < self.adaptation.steps - 1 and weights[j]:  # the multi-step loss's earlier steps
                    earlier = earlier + weights[j] * self.loss_on(fast, query_x, query_y)
            last = self.loss_on(fast, query_x, query_y)
            return earlier + weights[-1] * last if self.multi_step_loss else last

        # 3. Its gradient w.r.t. (params, extra), averaged over the tasks of the meta-batch.
        grad_params, grad_extra, loss = self.meta_gradient(query_loss_after_adaptation, state, tuple(batch))

        # 4. One step of the outer optimiser, along the meta-gradient clipped to clip_norm if set.
        loss = self.check_finite(loss, state)
        if self.clip_norm is not None:
            grads = [*grad_params.values(), *grad_extra.values()]
            scale = min(1.0, self.clip_norm / (float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) + 1e-12))
            grad_params = {k: g * scale for k, g in grad_params.items()}
            grad_extra = {k: g * scale for k, g in grad_extra.items()}
        new_state = self.outer_update(state, grad_params, grad_extra)
        tasks, k, q = batch.tasks, batch.support_x.shape[1], batch.query_x.shape[1]
        return new_state, {
            "loss": loss,  # mean query loss after adaptation, before this update
            "passes": self.inner_steps + 1,  # n inner (each also differentiated twice) + 1 outer
            "images": tasks * (self.inner_steps * k + q),
        }
