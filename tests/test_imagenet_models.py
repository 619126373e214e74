"""resnet18 and mobilenet_v2: torchvision's structure (state-dict keys, parameter counts), any input size, and channels_last."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from bench import api
from bench.data import load
from bench.env import detect
from bench.measure import metrics
from bench.pipeline import parse
from techniques import CHANNELS_LAST, CONTIGUOUS, Context, NotApplicable
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


def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.{k}", (c,)) for k in ("weight", "bias", "running_mean", "running_var")] + \
        [(f"{prefix}.num_batches_tracked", ())]


def _torchvision_resnet18() -> list[tuple[str, tuple[int, ...]]]:
    """torchvision.models.resnet18's state dict, written from its definition (BasicBlock, layers
    [2, 2, 2, 2], widths 64-512, a 1x1 conv + BN downsample where the stride or width changes)."""
    keys = [("conv1.weight", (64, 3, 7, 7)), *_bn("bn1", 64)]
    inplanes = 64
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p, stride = f"layer{stage}.{block}", (2 if stage > 1 and block == 0 else 1)
            keys += [(f"{p}.conv1.weight", (planes, inplanes, 3, 3)), *_bn(f"{p}.bn1", planes),
                     (f"{p}.conv2.weight", (planes, planes, 3, 3)), *_bn(f"{p}.bn2", planes)]
            if stride != 1 or inplanes != planes:
                keys += [(f"{p}.downsample.0.weight", (planes, inplanes, 1, 1)), *_bn(f"{p}.downsample.1", planes)]
            inplanes = planes
    return keys + [("fc.weight", (1000, 512)), ("fc.bias", (1000,))]


def _torchvision_mobilenet_v2() -> list[tuple[str, tuple[int, ...]]]:
    """torchvision.models.mobilenet_v2's state dict, written from its definition (the paper's table 2:
    expansion t, width c, repeats n, stride s; Conv2dNormActivation = conv + BN)."""
    keys = [("features.0.0.weight", (32, 3, 3, 3)), *_bn("features.0.1", 32)]
    inp, idx = 32, 1
    for t, c, n, _s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                        (6, 160, 3, 2), (6, 320, 1, 1)):
        for _ in range(n):
            hidden, p, j = inp * t, f"features.{idx}.conv", 0
            if t != 1:
                keys += [(f"{p}.0.0.weight", (hidden, inp, 1, 1)), *_bn(f"{p}.0.1", hidden)]
                j = 1
            keys += [(f"{p}.{j}.0.weight", (hidden, 1, 3, 3)), *_bn(f"{p}.{j}.1", hidden),
                     (f"{p}.{j + 1}.weight", (c, hidden, 1, 1)), *_bn(f"{p}.{j + 2}", c)]
            inp, idx = c, idx + 1
    keys += [(f"features.{idx}.0.weight", (1280, 320, 1, 1)), *_bn(f"features.{idx}.1", 1280)]
    return keys + [("classifier.1.weight", (1000, 1280)), ("classifier.1.bias", (1000,))]


@pytest.mark.parametrize("name, expected", [("resnet18", _torchvision_resnet18), ("mobilenet_v2", _torchvision_mobilenet_v2)])
def test_state_dict_names_and_shapes_are_torchvisions(name, expected):
    got = [(k, tuple(v.shape)) for k, v in api.create_model(name).state_dict().items()]
    assert got == expected()


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
    assert figs["tensors_converted"] == 20    # 20 conv weights
    assert parse("channels_last").memory_formats() == (CONTIGUOUS, CHANNELS_LAST)   # what eager is handed
    pred = api.technique("eager")().prepare(out, dataclasses.replace(ctx, memory_format=CHANNELS_LAST))
    placed = pred.place(x)
    assert placed.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(pred.run(placed), ref, atol=1e-4)
    with pytest.raises(NotApplicable, match="no 2-D convolutions"):
        ChannelsLast().apply(nn.Sequential(nn.Flatten(), nn.Linear(8, 2)), ctx)


# --- techniques on both nets, at 3x32x32 to stay fast (the structure is what is tested) --------------

SMALL = (3, 32, 32)


def _small_ctx(name: str, tmp_path=None) -> Context:
    return Context(name, load("synthetic", SMALL), detect(), batch_size=4, quick=True, scratch_dir=tmp_path)


def _with_statistics(name: str) -> nn.Module:
    """The net with non-trivial BatchNorm statistics and affine parameters (random, seeded), so that
    folding, pruning and quantization have real numbers to act on."""
    torch.manual_seed(0)
    model = api.create_model(name)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name, folded", [("resnet18", 20), ("mobilenet_v2", 52)])
def test_fusion_folds_every_conv_bn_pair(name, folded):
    from techniques.fusion import Fusion
    model, x = _with_statistics(name), torch.randn(4, *SMALL)
    fused, figs, _ = Fusion().apply(copy.deepcopy(model), _small_ctx(name))
    assert figs["bn_folded"] == folded and not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.inference_mode():
        assert (fused(x) - model(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_structured_prune_through_residuals_and_depthwise(name):
    from techniques.prune import prune_channels, zero_removed
    model, x = _with_statistics(name), torch.randn(4, *SMALL)
    original = copy.deepcopy(model)
    _, removed = prune_channels(model, 0.5, x[:2])
    assert metrics.count_params(model) < 0.5 * metrics.count_params(original)
    masked = zero_removed(original, removed)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (4, 1000) and (out - masked(x)).abs().max().item() < 1e-4
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1):
        assert conv.groups == conv.in_channels == conv.out_channels   # depthwise followed its input


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_static_quantization_converts_every_conv(name):
    from techniques.quantize import Quantize
    model, x = _with_statistics(name), torch.randn(4, *SMALL)
    qmodel, figs = Quantize(mode="static").apply(model, _small_ctx(name))
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert figs["conv_quantized"] == n_conv          # depthwise convs and the residual adds included
    assert figs["bytes_after"] < 0.3 * figs["bytes_before"]
    with torch.inference_mode():
        ref, out = model(x), qmodel(x)
    assert out.shape == (4, 1000)
    assert torch.corrcoef(torch.stack([ref.flatten(), out.flatten()]))[0, 1] > 0.9   # int8 tracks fp32


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_onnx_export_runs_in_onnx_runtime_and_matches_eager(name, tmp_path):
    from techniques.onnx import Onnx
    model, x = _with_statistics(name), torch.randn(4, *SMALL)
    pred = Onnx(ep="cpu").prepare(copy.deepcopy(model), _small_ctx(name, tmp_path))
    with torch.inference_mode():
        assert (pred.predict(x) - model(x)).abs().max().item() < 1e-4


def test_distill_trains_the_declared_smaller_student():
    """Both nets declare mobilenet_v2_050 (torchvision's width 0.5) as their student; a 1000-class
    labelled set of random images is enough to prove the wiring, not the accuracy."""
    from bench.data import Dataset
    from techniques.distill import Distill
    g = torch.Generator().manual_seed(0)
    data = Dataset("tiny1000", torch.randn(48, *SMALL, generator=g), torch.randint(0, 1000, (48,), generator=g),
                   torch.randn(16, *SMALL, generator=g), torch.randint(0, 1000, (16,), generator=g),
                   num_classes=1000, fingerprint="tiny1000-seed0")
    teacher = _with_statistics("resnet18")
    student, figs = Distill(epochs=1).apply(teacher, Context("resnet18", data, detect(), batch_size=4, quick=True))
    assert Distill().student_for("mobilenet_v2") == Distill().student_for("resnet18") == "mobilenet_v2_050"
    assert type(student).__name__ == "MobileNetV2" and student.features[0][0].out_channels == 16
    assert metrics.count_params(student) < 0.25 * metrics.count_params(teacher)
    assert {"student_accuracy", "student_alone_accuracy", "teacher_accuracy"} <= set(figs)
    assert figs["student_params"] == metrics.count_params(student) and figs["teacher_params"] == 11_689_512


def test_mobilenet_v2_050_is_torchvisions_width_half():
    model = api.create_model("mobilenet_v2_050")
    assert metrics.count_params(model) == 1_968_680     # torchvision mobilenet_v2(width_mult=0.5)
    assert [tuple(v.shape) for v in model.state_dict().values()][:1] == [(16, 3, 3, 3)]


def test_quick_runs_take_the_declared_small_input_unless_one_is_given():
    from bench.running.plan import ModelSettings, quick_input_shapes
    given = (ModelSettings("mobilenet_v2", input_shape=(3, 96, 96)),)
    settings, small = quick_input_shapes(True, given, {"resnet18", "mobilenet_v2", "lenet"})
    assert small == {"resnet18": (3, 64, 64)}
    assert settings == (*given, ModelSettings("resnet18", input_shape=(3, 64, 64)))
    assert quick_input_shapes(False, (), {"resnet18"}) == ((), {})
