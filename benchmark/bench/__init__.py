"""The measurements behind ``python -m benchmark bench``: what a meta-step costs, against what it should cost.

The unit is B: one ordinary forward-backward pass over the support images of one meta-batch (T tasks x k
images as one batch). A meta-step with n inner steps does about n + 1 such passes, so its time over
(n + 1) * B says how close an algorithm runs to the cost of the arithmetic it must do.

- :mod:`~benchmark.bench.timing`: interleaved timing rounds, medians and per-round ratios;
- :mod:`~benchmark.bench.flops`: the arithmetic each meta-step does, against B's;
- :mod:`~benchmark.bench.memory`: peak extra memory of one meta-step, in a fresh process per variant;
- :mod:`~benchmark.bench.against_higher`: second-order MAML through ``higher``, timed and gradient-checked;
- :mod:`~benchmark.bench.workload`: what is timed (variants, B, evaluation as ``run`` does it);
- :mod:`~benchmark.bench.measurement`: ``measure``, which composes them, and ``costs`` for the sweep estimate.
"""

from benchmark.bench.against_higher import (
    FunctionalNet,
    gradient_agreement,
    higher_meta_gradient,
    higher_meta_step,
    meta_gradient,
)
from benchmark.bench.flops import counting_flops
from benchmark.bench.measurement import ROW_FIELDS, costs, measure
from benchmark.bench.memory import MEMORY_METHODS, meta_step_memory
from benchmark.bench.timing import interleave, medians, round_ratios, synchronize
from benchmark.bench.workload import (
    VARIANT_FIELDS,
    adapt_and_score,
    apply_variant,
    baseline_pass,
    evaluation_batch,
    one_by_one,
)

__all__ = [
    "MEMORY_METHODS",
    "ROW_FIELDS",
    "VARIANT_FIELDS",
    "FunctionalNet",
    "adapt_and_score",
    "apply_variant",
    "baseline_pass",
    "costs",
    "counting_flops",
    "evaluation_batch",
    "gradient_agreement",
    "higher_meta_gradient",
    "higher_meta_step",
    "interleave",
    "measure",
    "medians",
    "meta_gradient",
    "meta_step_memory",
    "one_by_one",
    "round_ratios",
    "synchronize",
]
