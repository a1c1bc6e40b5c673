"""The functional U-Net against an independent nn.Module, its parameter count, its derivatives
(checked against finite differences) and its behaviour under vmap."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from algorithms import unet
from algorithms.models import ModelConfig, build_model

# GroupNorm groups by hand from the documented rule (<= 8 groups, >= 4 channels per group).
GROUPS = {2: 1, 4: 1, 6: 1, 8: 2, 12: 3, 16: 4, 32: 8, 64: 8, 128: 8, 256: 8}


class ReferenceUNet(nn.Module):
    """The same architecture written with modules; its state_dict keys are the functional names."""

    def __init__(self, depth: int, width: int, norm: str):
        super().__init__()
        self.depth = depth

        def block(c_in, c_out):
            layers = {"conv1": nn.Conv2d(c_in, c_out, 3, padding=1), "conv2": nn.Conv2d(c_out, c_out, 3, padding=1)}
            for i in ("1", "2"):
                if norm == "group":
                    layers["norm" + i] = nn.GroupNorm(GROUPS[c_out], c_out)
                elif norm == "batch":
                    layers["norm" + i] = nn.BatchNorm2d(c_out, track_running_stats=False)
                else:
                    layers["norm" + i] = nn.Identity()
            return nn.ModuleDict(layers)

        self.stages = nn.ModuleDict()
        c_in = 1
        for level in range(depth + 1):
            self.stages[f"enc{level}"] = block(c_in, width * 2**level)
            c_in = width * 2**level
        for level in reversed(range(depth)):
            c = width * 2**level
            self.stages[f"dec{level}"] = block(2 * c, c)
            self.stages[f"dec{level}"]["up"] = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.stages["head"] = nn.Conv2d(width, 1, 1)

    def load_functional(self, params):
        self.stages.load_state_dict(params, strict=True)

    @staticmethod
    def run_block(b, x):
        x = F.relu(b["norm1"](b["conv1"](x)))
        return F.relu(b["norm2"](b["conv2"](x)))

    def forward(self, x):
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (m - h % m) % m, (m - w % m) % m
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
        skips = []
        for level in range(self.depth):
            x = self.run_block(self.stages[f"enc{level}"], x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.run_block(self.stages[f"enc{self.depth}"], x)
        for level in reversed(range(self.depth)):
            up = self.stages[f"dec{level}"]["up"](x)
            x = self.run_block(self.stages[f"dec{level}"], torch.cat([skips[level], up], 1))
        y = self.stages["head"](x)
        return y[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]


def test_group_count_follows_the_documented_rule():
    assert {c: unet.group_count(c) for c in GROUPS} == GROUPS


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
@pytest.mark.parametrize("size", [(32, 32), (29, 37), (5, 3)])
def test_matches_an_independent_module(norm, size):
    config = ModelConfig(depth=2, width=4, norm=norm)
    model = build_model(config)
    params = model.init(seed=1)
    # perturb the norm scales and biases so that they matter in the comparison
    params = {k: v + 0.1 * torch.randn_like(v) for k, v in params.items()}
    reference = ReferenceUNet(2, 4, norm)
    reference.load_functional(params)
    x = torch.rand(3, 1, *size)
    out = model.apply(params, x)
    assert out.shape == (3, 1, *size)
    torch.testing.assert_close(out, reference(x), rtol=1e-4, atol=1e-5)
    # and through functional_call on the module, the functional names address the same weights
    via_module = functional_call(reference, {f"stages.{k}": v for k, v in params.items()}, (x,), strict=True)
    torch.testing.assert_close(out, via_module, rtol=1e-4, atol=1e-5)


def test_parameter_counts():
    params = build_model(ModelConfig(depth=3, width=16, norm="group")).init(0)
    assert sum(v.numel() for v in params.values()) == 483_153
    for depth, width, norm in [(3, 16, "batch"), (3, 16, "none"), (4, 16, "group"), (2, 8, "none")]:
        params = build_model(ModelConfig(depth=depth, width=width, norm=norm)).init(0)
        expected = sum(p.numel() for p in ReferenceUNet(depth, width, norm).parameters())
        assert sum(v.numel() for v in params.values()) == expected, (depth, width, norm)
        assert {k: tuple(v.shape) for k, v in params.items()} == unet.param_shapes(ModelConfig(depth=depth, width=width, norm=norm))


def test_init_is_float32_and_deterministic_in_the_seed():
    model = build_model(ModelConfig(depth=2, width=4))
    a, b, c = model.init(0), model.init(0), model.init(1)
    assert all(v.dtype == torch.float32 for v in a.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["enc0.conv1.weight"], c["enc0.conv1.weight"])
    assert torch.equal(a["enc1.norm2.weight"], torch.ones(8)) and torch.equal(a["enc1.norm2.bias"], torch.zeros(8))
    # He initialisation: std of a 3x3 conv's weights is about sqrt(2 / fan_in)
    w = build_model(ModelConfig(depth=3, width=16)).init(0)["enc3.conv2.weight"]
    assert w.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.05)


def _tiny_problem(norm):
    config = ModelConfig(depth=1, width=2, norm=norm)
    model = build_model(config)
    g = torch.Generator().manual_seed(0)
    params = {k: (v + 0.1 * torch.randn(v.shape, generator=g)).double() for k, v in model.init(3).items()}
    x = torch.rand(2, 1, 6, 7, generator=g, dtype=torch.float64)
    y = (torch.rand(2, 1, 6, 7, generator=g) > 0.5).double()
    return model, params, x, y


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_second_derivative_matches_finite_differences(norm):
    """A Hessian-vector product from grad-of-grad equals central differences of the gradient."""
    model, params, x, y = _tiny_problem(norm)

    def loss(p):
        return F.binary_cross_entropy_with_logits(model.apply(p, x), y)

    g = torch.Generator().manual_seed(1)
    v = {k: torch.randn(t.shape, generator=g, dtype=torch.float64) for k, t in params.items()}

    def directional_grad(p):
        gp = grad(loss)(p)
        return sum((gp[k] * v[k]).sum() for k in p)

    hvp = grad(directional_grad)(params)
    eps = 1e-5
    plus = grad(loss)({k: params[k] + eps * v[k] for k in params})
    minus = grad(loss)({k: params[k] - eps * v[k] for k in params})
    for k in params:
        torch.testing.assert_close(hvp[k], (plus[k] - minus[k]) / (2 * eps), rtol=1e-5, atol=1e-7)


def test_grad_of_grad_through_an_inner_step_is_nonzero_and_finite():
    model, params, x, y = _tiny_problem("group")

    def loss(p):
        return F.binary_cross_entropy_with_logits(model.apply(p, x), y)

    def after_one_step(p):
        g = grad(loss)(p)
        return loss({k: p[k] - 0.4 * g[k] for k in p})

    meta = grad(after_one_step)(params)
    first_order = grad(loss)({k: params[k] - 0.4 * g for k, g in grad(loss)(params).items()})
    assert all(torch.isfinite(t).all() for t in meta.values())
    assert any(not torch.allclose(meta[k], first_order[k]) for k in meta)  # the second-order term is there


@pytest.mark.parametrize("batched_params", [False, True])
def test_vmap_over_tasks_equals_a_loop(batched_params):
    model = build_model(ModelConfig(depth=2, width=4, norm="batch"))
    params = model.init(0)
    tasks = 3
    x = torch.rand(tasks, 2, 1, 13, 17)
    if batched_params:
        stacked = {k: torch.stack([v + 0.05 * t for t in range(tasks)]) for k, v in params.items()}
        out = vmap(model.apply)(stacked, x)
        loop = [model.apply({k: v[t] for k, v in stacked.items()}, x[t]) for t in range(tasks)]
    else:
        out = vmap(model.apply, in_dims=(None, 0))(params, x)
        loop = [model.apply(params, x[t]) for t in range(tasks)]
    torch.testing.assert_close(out, torch.stack(loop), rtol=1e-4, atol=1e-5)


def test_bad_input_and_config_are_clear_errors():
    model = build_model(ModelConfig(depth=2, width=4))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        model.apply(model.init(0), torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="norm"):
        ModelConfig(norm="layer")
    with pytest.raises(ValueError, match="depth"):
        ModelConfig(depth=0)
    with pytest.raises(ValueError, match="unknown name"):
        ModelConfig(name="resnet")
    with pytest.raises(ValueError, match="smp-vgg11 only"):
        ModelConfig(encoder_weights="imagenet")
    with pytest.raises(ValueError, match="depth must be an integer between 1 and 5"):
        ModelConfig(name="smp-vgg11", depth=6)
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({"name": "unet", "colour": "red"})


def test_config_round_trips_and_model_pickles():
    config = ModelConfig(depth=3, width=8, norm="none")
    assert ModelConfig.from_dict(config.to_dict()) == config
    model = pickle.loads(pickle.dumps(build_model(config)))
    x = torch.rand(1, 1, 9, 9)
    params = model.init(0)
    torch.testing.assert_close(model.apply(params, x), build_model(config).apply(params, x))
