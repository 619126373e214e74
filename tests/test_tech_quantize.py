"""The quantize transform: what torch.ao really converts, fidelity on trained LeNet, sizes, composition."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import models
from bench.running.cell import CellSpec
from tests.cellrow import cell_row
from bench.data import load
from bench.env import detect
from bench.api import UserError
from bench.pipeline import parse
from bench.measure.timing import TimingConfig
from bench.training.cache import trained
from techniques import Context
from techniques.quantize import Quantize, count_layers

FAST = TimingConfig(warmup=1, min_rounds=3, min_time_s=0.0, max_time_s=1.0)


@pytest.fixture(scope="module")
def lenet(digits):
    return trained("lenet", digits)


def _ctx(name: str, data) -> Context:
    return Context(name, data, detect(), batch_size=64, quick=True)


def _agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return (a(x).argmax(1) == b(x).argmax(1)).float().mean().item()


def test_dynamic_quantizes_linear_only_and_says_so(lenet, digits):
    qmodel, figs = Quantize(mode="dynamic").apply(lenet, _ctx("lenet", digits))
    # torch.ao asked for {Linear, Conv2d} converts the two Linear layers and leaves both convs float.
    assert figs["linear_quantized"] == 2 and figs["conv_quantized"] == 0 and figs["layers_float"] == 2
    assert figs["calibration_images"] == 0
    assert set(figs) == set(Quantize.figures)
    assert figs["bytes_after"] < figs["bytes_before"] / 2   # fc1 (800x500) holds most weights: int8 shrinks it
    assert _agreement(qmodel, lenet, digits.test_x) >= 0.98
    assert isinstance(lenet.fc1, nn.Linear)                 # the input model is left as it was


def test_static_quantizes_convs_too_with_calibration(lenet, digits):
    qmodel, figs = Quantize(mode="static").apply(lenet, _ctx("lenet", digits))
    assert figs["linear_quantized"] == 2 and figs["conv_quantized"] == 2 and figs["layers_float"] == 0
    assert figs["calibration_images"] == 128                # quick context
    assert figs["bytes_after"] < figs["bytes_before"] / 3
    assert _agreement(qmodel, lenet, digits.test_x) >= 0.98


@pytest.mark.parametrize("name", models.list())
def test_counts_match_the_architecture_on_every_model(name):
    """Untrained weights suffice here: the counts depend on the layers, not on their values."""
    torch.manual_seed(0)
    model = models.create(name).eval()
    n_lin = sum(isinstance(m, nn.Linear) for m in model.modules())
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    data = load("synthetic", models.spec(name).fast_input_shape)
    _, dyn = Quantize(mode="dynamic").apply(model, _ctx(name, data))
    assert (dyn["linear_quantized"], dyn["conv_quantized"], dyn["layers_float"]) == (n_lin, 0, n_conv)
    qmodel, st = Quantize(mode="static").apply(model, _ctx(name, data))
    assert (st["linear_quantized"], st["conv_quantized"], st["layers_float"]) == (n_lin, n_conv, 0)
    with torch.inference_mode():
        assert qmodel(data.test_x[:4]).shape == (4, models.spec(name).num_classes)


def test_deprecation_warnings_are_silenced_narrowly(lenet, digits):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Quantize(mode="static").apply(lenet, _ctx("lenet", digits))
        warnings.warn("an unrelated warning still shows", UserWarning)
    messages = [str(w.message) for w in caught]
    assert not any("torch.ao.quantization is deprecated" in m or "reduce_range" in m for m in messages), messages
    assert "an unrelated warning still shows" in messages


def test_count_layers_sees_float_layers():
    assert count_layers(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2))) == \
        {"linear_quantized": 0, "conv_quantized": 0, "layers_float": 2}


def test_quantized_model_runs_through_the_harness_on_eager():
    row = cell_row(CellSpec.of("lenet", "quantize:mode=dynamic@eager", 64, quick=True, timing=FAST), detect())
    assert row["status"] == "ok" and row["device"] == "cpu"
    assert row["top1_agreement"] >= 0.98
    assert row["speedup"] > 0            # slower than float is a valid result; it must be measured
    assert f'"quantize.linear_quantized": 2.0' in row["figures"]


def test_bad_mode_names_field_choices_and_value():
    with pytest.raises(ValueError, match=r"quantize\.mode must be one of dynamic, static; got 'int4'"):
        Quantize(mode="int4")
    with pytest.raises(UserError, match=r"quantize\.mode: 'int4' is not one of dynamic, static"):
        parse("quantize:mode=int4")
