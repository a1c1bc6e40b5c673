"""The smp U-Net / VGG-11 backbone: its structure per norm, that it is the model smp builds, that it
runs under functional_call, second-order grad and vmap, and how pretrained weights load or fail."""

from __future__ import annotations

import time

import huggingface_hub
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.func import grad, vmap

from algorithms import smp_vgg11
from algorithms.models import ModelConfig, build_model

TINY = dict(name="smp-vgg11", depth=1, width=4)


@pytest.fixture(scope="module")
def tiny():
    """(model, its params for seed 0): building smp's module takes seconds (torchvision builds VGG's
    120M-parameter classifier before smp deletes it), so the tests share one."""
    model = build_model(ModelConfig(**TINY, norm="batch"))
    return model, model.init(0)


def _kinds(module):
    return {type(m).__name__ for m in module.modules()}


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_structure_per_norm(norm):
    with torch.device("meta"):  # structure only: skips seconds of weight initialisation
        net = smp_vgg11.build_module(ModelConfig(name="smp-vgg11", depth=2, width=4, norm=norm), seed=0)
    assert "BatchNorm2d" not in _kinds(net.encoder) and "GroupNorm" not in _kinds(net.encoder)  # vgg11, not vgg11_bn
    decoder = _kinds(net.decoder)
    assert ("BatchNorm2d" in decoder) == (norm == "batch")
    assert ("GroupNorm" in decoder) == (norm == "group")
    assert all(not m.track_running_stats for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert list(net.named_buffers()) == []
    assert not any(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))
    # depth 2: conv-relu (full-res skip), pool, conv-relu (1/2), pool, conv-relu conv-relu (1/4); no third pool
    assert len(net.encoder.features) == 10 and isinstance(net.encoder.features[-1], nn.ReLU)


def test_depth_5_is_the_seed_model():
    config = ModelConfig(name="smp-vgg11", depth=5, width=16, norm="batch")
    with torch.device("meta"):  # shapes only, no weight initialisation
        ours = smp_vgg11.build_module(config, seed=0)
        seed_model = smp.Unet("vgg11", encoder_weights=None, in_channels=1, classes=1)
    assert {k: v.shape for k, v in ours.named_parameters()} == {k: v.shape for k, v in seed_model.named_parameters()}
    assert sum(p.numel() for p in ours.parameters()) == 18_252_881


def test_every_parameter_is_used(tiny):
    model, params = tiny
    x = torch.rand(2, 1, 8, 8)
    g = grad(lambda p: model.apply(p, x).square().mean())(params)
    assert all(t.abs().sum() > 0 for t in g.values())


def test_apply_equals_the_module_and_crops_any_size(tiny):
    model, params = tiny
    net = smp_vgg11.build_module(model.config, seed=0)
    x = torch.rand(3, 1, 16, 18)
    torch.testing.assert_close(model.apply(params, x), net(x))
    odd = torch.rand(2, 1, 9, 13)
    padded = F.pad(odd, (0, 1, 0, 1), mode="replicate")  # 9 -> 10, 13 -> 14: pad split as 0 before, 1 after
    torch.testing.assert_close(model.apply(params, odd), net(padded)[..., :9, :13])


def test_init_is_deterministic_and_leaves_the_global_rng_alone(tiny):
    model, a = tiny
    before = torch.random.get_rng_state()
    b = model.init(0)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == torch.float32 for k in a)
    assert not torch.equal(a["decoder.blocks.0.conv1.0.weight"], model.init(1)["decoder.blocks.0.conv1.0.weight"])


@pytest.mark.slow
def test_second_order_grad_matches_finite_differences(tiny):
    """v . H v from grad-of-grad through functional_call equals central differences, float64
    (they agree to ~1e-9 relative at eps 1e-4..1e-5; at 1e-3 the step crosses kinks)."""
    model, params = tiny
    params = {k: v.double() for k, v in params.items()}
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = (torch.rand(2, 1, 8, 8, generator=gen) > 0.5).double()
    v = {k: torch.randn(t.shape, generator=gen, dtype=torch.float64) for k, t in params.items()}
    norm = sum(t.square().sum() for t in v.values()).sqrt()
    v = {k: t / norm for k, t in v.items()}  # a unit direction: a small step crosses no ReLU or max-pool kink

    def loss(p):
        return F.binary_cross_entropy_with_logits(model.apply(p, x), y)

    def slope(p):  # directional derivative along v
        g = grad(loss)(p)
        return sum((g[k] * v[k]).sum() for k in p)

    hv = grad(slope)(params)
    curvature = sum((hv[k] * v[k]).sum() for k in params)
    eps = 1e-5
    finite = (slope({k: params[k] + eps * v[k] for k in params}) - slope({k: params[k] - eps * v[k] for k in params})) / (2 * eps)
    assert curvature.item() == pytest.approx(finite.item(), rel=1e-5)


def test_vmap_over_tasks_equals_a_loop(tiny):
    model, params = tiny
    stacked = {k: torch.stack([v, 1.1 * v]) for k, v in params.items()}
    x = torch.rand(2, 3, 1, 16, 16)
    loop = torch.stack([model.apply({k: v[t] for k, v in stacked.items()}, x[t]) for t in range(2)])
    torch.testing.assert_close(vmap(model.apply)(stacked, x), loop, rtol=1e-4, atol=1e-5)


def test_unreachable_weights_fail_fast_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    start = time.monotonic()
    with pytest.raises(smp_vgg11.PretrainedWeightsError) as err:
        build_model(ModelConfig(name="smp-vgg11", encoder_weights="imagenet"))
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "\n" not in message and "ImageNet encoder weights" in message and "127.0.0.1" in message
    assert isinstance(err.value, ValueError)  # what the CLI prints as one line


def test_pretrained_weights_load_into_the_encoder(monkeypatch, tmp_path):
    """Stand in for the hub with a weights file on disk: the encoder gets it, the first conv summed over RGB."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in smp.encoders.get_encoder("vgg11", in_channels=3).state_dict().items()}
    rgb = {k: torch.randn(shape) for k, shape in shapes.items()}
    path = tmp_path / "model.safetensors"
    save_file(rgb, str(path))
    asked = {}

    def fake_download(repo_id, filename, revision, **kwargs):
        asked.update(repo_id=repo_id, filename=filename, local_files_only=kwargs.get("local_files_only"))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    net = smp_vgg11.build_module(ModelConfig(name="smp-vgg11", depth=2, width=4, encoder_weights="imagenet"), seed=3)
    params = dict(net.named_parameters())
    assert asked == {"repo_id": "smp-hub/vgg11.imagenet", "filename": "model.safetensors", "local_files_only": True}
    torch.testing.assert_close(params["encoder.features.0.weight"], rgb["features.0.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(params["encoder.features.8.weight"], rgb["features.8.weight"])
    assert "encoder.features.11.weight" not in params  # beyond depth 2
