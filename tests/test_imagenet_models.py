"""resnet18 and mobilenet_v2: torchvision's structure (state-dict keys, parameter counts), any input size, and channels_last."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench import api
from bench.data import load
from bench.env import detect
from bench.measure import metrics
from techniques import Context, NotApplicable
from techniques.channels_last import ChannelsLast

# Parameter counts and the first and last state-dict keys of torchvision 0.29's resnet18() and
# mobilenet_v2() (num_classes=1000); a state dict saved from them must load here key for key.
TORCHVISION = {
    "resnet18": (11_689_512, "conv1.weight", "fc.bias", 122),
    "mobilenet_v2": (3_504_872, "features.0.0.weight", "classifier.1.bias", 314),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_structure_matches_torchvision(name):
    params, first, last, n_keys = TORCHVISION[name]
    model = api.create_model(name)
    keys = list(model.state_dict())
    assert metrics.count_params(model) == params
    assert (keys[0], keys[-1], len(keys)) == (first, last, n_keys)
    assert api.model_spec(name).input_shape == (3, 224, 224) and api.model_spec(name).num_classes == 1000


def test_mobilenet_v2_convolutions_are_what_the_paper_says():
    convs = [m for m in api.create_model("mobilenet_v2").modules() if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups == c.in_channels > 1]
    pointwise = [c for c in convs if c.kernel_size == (1, 1)]
    assert (len(convs), len(depthwise), len(pointwise)) == (52, 17, 34)   # 17 blocks; stem is a dense 3x3


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_smaller_inputs_run_with_proportionally_fewer_flops(name):
    model = api.create_model(name).eval()
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    big, small = metrics.flops(model, torch.randn(1, 3, 224, 224)), metrics.flops(model, torch.randn(1, 3, 64, 64))
    assert 9 < big / small < 16          # (224/64)^2 = 12.25 for the convolutions; the classifier is fixed


def test_channels_last_keeps_outputs_and_places_inputs_in_nhwc():
    data = load("synthetic", (3, 64, 64))
    ctx = Context("resnet18", data, detect(), batch_size=2)
    model = api.create_model("resnet18").eval()
    x = data.test_x[:2]
    with torch.inference_mode():
        ref = model(x)
    out, figs = ChannelsLast().apply(model, ctx)
    assert figs["tensors_converted"] == 20 and ctx.memory_format == "channels_last"   # 20 conv weights
    pred = api.technique("eager")().prepare(out, ctx)
    placed = pred.place(x)
    assert placed.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(pred.run(placed), ref, atol=1e-4)
    with pytest.raises(NotApplicable, match="no 2-D convolutions"):
        ChannelsLast().apply(nn.Sequential(nn.Flatten(), nn.Linear(8, 2)), ctx)
