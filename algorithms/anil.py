"""ANIL, "almost no inner loop" (Raghu, Raghu, Bengio & Vinyals, 2020).

Second-order MAML whose inner loop adapts only the last layer(s), by default the model's output head (the
1x1 convolution that turns the last decoder features into logits); every other weight stays at theta while
adapting:

    phi_0 = theta,   phi_j = phi_{j-1} - alpha * grad_head L_support(phi_{j-1})  (head entries only),

and the outer loss L_query(phi_n) is differentiated with respect to *all* of theta (the body reaches it
through the features the head sees and through the head's inner gradients), which the outer optimiser steps.
The paper's finding is that MAML's adaptation mostly re-reads features rather than changing them; here it is
a question to measure (segmentation heads are 1x1 convolutions over a handful of channels).

Test-time adaptation moves the same parameters at the same rate (``self.adaptation``). The meta-step is
MAML's (:class:`algorithms.maml.MAML`). Cost: each inner step still runs the whole network forward (the
functional model has no separate feature extractor to run once), but its backward pass, and the second-order
terms, stop at the head.
"""

from __future__ import annotations

from algorithms.adaptation import Adaptation
from algorithms.maml import MAML
from algorithms.models import Model
from algorithms.registry import register

OUTPUT_HEADS = {"unet": "head", "smp-vgg11": "segmentation_head"}
"""Each model's output layer, by parameter-name prefix (see :mod:`algorithms.unet`, :mod:`algorithms.smp_vgg11`)."""


@register("anil")
class ANIL(MAML):
    """ANIL. ``adapted``: the parameters the inner loop moves, comma-separated names or dotted prefixes
    (``"head"``, ``"head,dec0"``, ``"segmentation_head,decoder.blocks.3"``); None (the default) is the model's
    output head (:data:`OUTPUT_HEADS`). Other hyper-parameters: those of :class:`algorithms.maml.MAML`."""

    def __init__(self, model: Model, adapted: str | None = None, **hparams):
        super().__init__(model, **hparams)
        if adapted is not None and not (isinstance(adapted, str) and adapted.strip(" ,")):
            raise ValueError(f"anil: adapted must be comma-separated parameter names or prefixes, or None; got {adapted!r}")
        names = OUTPUT_HEADS[model.config.name] if adapted is None else adapted
        self.adapted = adapted
        self.adaptation = Adaptation(
            steps=self.inner_steps, rate=self.inner_lr, parameters=tuple(p.strip() for p in names.split(",") if p.strip())
        )
        parameters = model.init(0)  # names only, to refuse a prefix that matches nothing before any compute
        unmatched = [p for p in self.adaptation.parameters if not any(name == p or name.startswith(p + ".") for name in parameters)]
        if unmatched:
            raise ValueError(
                f"anil: adapted names {', '.join(unmatched)} match no parameter of model {model.config.name}; "
                f"its layers: {', '.join(sorted({name.rsplit('.', 1)[0] for name in parameters}))}"
            )

    def hparams(self) -> dict:
        return super().hparams() | {"adapted": self.adapted}
