"""Transforms fusion, prune, separable and distill on the reference nets and real digits data."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from bench.data import load
from bench.env import detect
from bench.api import UserError
from bench.pipeline import parse
from bench.measure.timing import TimingConfig
from bench.training.cache import evaluate, trained
from techniques import Context, NotApplicable
from techniques.distill import Distill, distillation_loss
from techniques.fusion import Fusion
from techniques.prune import Prune, prune_channels, zero_removed
from techniques.separable import Separable
from tests import timm_like

FIDELITY = 1e-4


@functools.lru_cache(maxsize=None)
def _data(name: str):
    return load("digits", models.spec(name).input_shape)


def _ctx(name: str, data, **kw) -> Context:
    return Context(name, data, detect(), batch_size=8, quick=True, **kw)


def _calibrated(name: str) -> nn.Module:
    return copy.deepcopy(_calibrated_once(name))


@functools.lru_cache(maxsize=None)
def _calibrated_once(name: str) -> nn.Module:
    """The net with BatchNorm statistics from real digits and non-trivial affine parameters, so that
    folding has real numbers to fold (training it fully would cost seconds and prove nothing more)."""
    torch.manual_seed(0)
    model = models.create(name)
    data = _data(name)
    model.train()
    with torch.no_grad():
        for i in range(0, 512, 128):
            model(data.train_x[i:i + 128])
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def lenet(digits):
    return trained("lenet", digits)


# --- fusion ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, folded", [("lenet_bn", 2), ("resnet8", 9), ("lenet", 0)])
def test_fusion_matches_unfused_and_folds_every_bn(name, folded):
    model = _calibrated(name)
    x = _data(name).test_x[:64]
    fused, figs, _ = Fusion().apply(copy.deepcopy(model), _ctx(name, _data(name)))
    assert figs["bn_folded"] == folded
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max().item() < FIDELITY


def test_fusion_drops_eval_noops_on_convnet(digits):
    model = _calibrated("convnet")
    fused, figs, notes = Fusion().apply(copy.deepcopy(model), _ctx("convnet", digits))
    assert figs == {"bn_folded": 0, "noops_removed": 2}   # the Dropout2d module and the F.dropout call
    assert notes == ("no BatchNorm to fold; it only removed 2 eval-time no-ops (Identity, Dropout)",)
    with torch.no_grad():
        assert torch.equal(fused(digits.test_x[:16]), model(digits.test_x[:16]))


# --- fusion: the forms model zoos write BatchNorm in ------------------------------------------------

def _with_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Running statistics from real images and non-trivial affine parameters, as `_calibrated` gives."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 64):
            model(x[i:i + 64])
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("factory, folded, noops", [
    (timm_like.RegNetLike, 4, 9),          # ConvNormAct: conv, bn (BatchNormAct2d), aa; Identities: 4 drop, 4 aa, 1 act
    (timm_like.EfficientNetLike, 3, 4),    # conv_stem then bn1 as siblings; a Dropout drop; apply_act=False
])
def test_fusion_folds_timm_batchnormact_and_keeps_its_activation(factory, folded, noops):
    data = _data("lenet")
    model = _with_statistics(factory(), data.train_x[:256])
    x = data.test_x[:64]
    fused, figs, notes = Fusion().apply(copy.deepcopy(model), _ctx("lenet", data))
    assert figs == {"bn_folded": folded, "noops_removed": noops} and notes == ()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert not any(n.target is F.batch_norm for n in fused.graph.nodes)
    kinds = (nn.ReLU, nn.SiLU, nn.Hardswish)
    acts = lambda m: sorted(type(a).__name__ for a in m.modules() if isinstance(a, kinds))  # noqa: E731
    assert acts(fused) == acts(model)   # the activations inside BatchNormAct2d stay, as modules
    # The BatchNorms' affine parameters are gone with them; each folded conv gained a bias.
    bn_params = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert _params(fused) == _params(model) - bn_params // 2
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max().item() < FIDELITY


def test_fusion_names_the_batchnorm_it_cannot_fold():
    data = _data("lenet")
    model = _with_statistics(nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False), timm_like.BatchNormAct2d(4),
        nn.Conv2d(4, 4, 3, bias=False), timm_like.BatchStatsNorm2d(4),
        nn.Flatten(), nn.Linear(4 * 24 * 24, 10)), data.train_x[:128])
    fused, figs, notes = Fusion().apply(copy.deepcopy(model), _ctx("lenet", data))
    assert figs == {"bn_folded": 1, "noops_removed": 1}
    assert notes == ("folded 1 of 2 BatchNorm layers; not folded: 3 (normalises with batch statistics)",)
    with torch.no_grad():
        assert (fused(data.test_x[:16]) - model(data.test_x[:16])).abs().max().item() < FIDELITY


@pytest.mark.parametrize("model, found", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), timm_like.BatchStatsNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)),
     r"looked at 1 BatchNorm layer: 1 \(normalises with batch statistics\)"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)),
     r"looked at 1 BatchNorm layer: 2 \(fed by ReLU, not a Conv2d\)"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)),
     r"the traced network has no BatchNorm"),
])
def test_fusion_that_finds_nothing_to_do_is_not_applicable(model, found):
    with pytest.raises(NotApplicable, match=r"^found no BatchNorm fed only by a Conv2d and no eval-time no-op "
                                            r"\(Identity, Dropout\) to remove \(" + found):
        Fusion().apply(model.eval(), _ctx("lenet", _data("lenet")))


FAST = TimingConfig(warmup=1, min_rounds=3, min_time_s=0.0, max_time_s=1.0, block_s=0.005, settle_s=0.0)


def test_a_transform_that_did_little_says_so_in_the_row_and_one_that_did_nothing_is_skipped():
    """The notes a transform returns reach the row, prefixed with its name; a part of a pipeline that
    finds nothing to do makes the row `skipped`, the reason naming the part."""
    from bench.running.cell import CellSpec
    from tests.cellrow import cell_row

    row = cell_row(CellSpec.of("lenet", "fusion", 2, data="synthetic", quick=True, timing=FAST), detect())
    assert row["status"] == "ok", row["reason"]
    assert row["notes"] == "fusion: no BatchNorm to fold; it only removed 2 eval-time no-ops (Identity, Dropout)"
    row = cell_row(CellSpec.of("lenet", "fusion+fusion", 2, data="synthetic", quick=True, timing=FAST), detect())
    assert row["status"] == "skipped"
    assert row["reason"] == ("not applicable: fusion: found no BatchNorm fed only by a Conv2d and no eval-time no-op "
                             "(Identity, Dropout) to remove (the traced network has no BatchNorm)")


# --- prune: structured ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lenet", "lenet_bn", "convnet", "gap_convnet", "resnet8"])
def test_structured_prune_shrinks_and_keeps_output_shape(name):
    data = _data(name)
    model = _calibrated(name)
    out, figs = Prune(amount=0.5, structured=True).apply(copy.deepcopy(model), _ctx(name, data))
    assert figs["channels_removed"] > 0
    assert figs["params_after"] == _params(out) < _params(model) == figs["params_before"]
    with torch.no_grad():
        assert out(data.test_x[:5]).shape == (5, 10)


def test_structured_prune_rebuilds_lenet_layers_consistently():
    model = _calibrated("lenet")
    prune_channels(model, 0.5, _data("lenet").test_x[:2])
    assert (model.conv1.out_channels, model.conv2.in_channels, model.conv2.out_channels) == (10, 10, 25)
    assert model.fc1.weight.shape == (250, 25 * 4 * 4) and model.fc2.weight.shape == (10, 250)


def _prune_vs_mask(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, dict, float]:
    original = copy.deepcopy(model)
    _, removed = prune_channels(model, 0.5, x[:2])
    with torch.no_grad():
        diff = (model(x) - zero_removed(original, removed)(x)).abs().max().item()
    return model, removed, diff


@pytest.mark.parametrize("name", ["lenet", "lenet_bn", "convnet", "gap_convnet", "resnet8"])
def test_structured_prune_equals_the_masked_original(name):
    """Zeroing exactly the removed channels in the original gives the pruned net's output: the next
    layers, BatchNorms and flattened Linear features were all sliced in step."""
    model, removed, diff = _prune_vs_mask(_calibrated(name), _data(name).test_x[:32])
    assert removed and diff < FIDELITY


def test_structured_prune_cuts_residual_partners_together():
    """resnet8's stem and its first stage's block outputs are added together: same channels lost."""
    model, removed, diff = _prune_vs_mask(_calibrated("resnet8"), _data("resnet8").test_x[:16])
    tied = [removed[k] for k in removed if k == "bn1" or (k.startswith("layer1") and k.endswith("bn2"))]
    assert len(tied) >= 2 and all(t == tied[0] for t in tied) and diff < FIDELITY


class _Hard(nn.Module):
    """A MobileNetV3-style block: depthwise conv, ReLU6 and Hardswish, a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardswish())
        self.block = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU6(),
                                   nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.Hardswish(),
                                   nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 7)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block(x)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_structured_prune_handles_depthwise_relu6_and_hardswish():
    torch.manual_seed(0)
    model = _Hard().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5), m.running_mean.uniform_(-0.2, 0.2)
    model, removed, diff = _prune_vs_mask(model, torch.randn(8, 3, 12, 12))
    dw = model.block[3]
    assert dw.groups == dw.in_channels == dw.out_channels == model.block[0].out_channels == 16
    assert model.stem[0].out_channels == model.block[6].out_channels == 8        # tied by the residual add
    assert model.head.out_features == 7 and diff < FIDELITY


@pytest.mark.parametrize("mha", [False, True])
def test_structured_prune_of_a_net_with_attention_is_refused_naming_the_layers(mha):
    """A timm-style Attention (qkv Linear split into num_heads by a reshape) failed its first forward
    after DepGraph cut its features; nn.MultiheadAttention is refused alike."""
    kind = "MultiheadAttention" if mha else "Attention"
    with pytest.raises(NotApplicable, match=rf"attention layers: blocks\.0\.attn \({kind}, 2 heads\), "
                                            rf"blocks\.1\.attn \({kind}, 2 heads\); unstructured pruning"):
        Prune(amount=0.5, structured=True).apply(timm_like.TinyViT(mha=mha).eval(), _ctx("lenet", _data("lenet")))


def test_unstructured_prune_of_a_vit_works_and_pruning_nothing_more_is_refused():
    data = _data("lenet")
    out, figs = Prune(amount=0.5).apply(timm_like.TinyViT().eval(), _ctx("lenet", data))
    assert figs["sparsity"] == pytest.approx(0.5, abs=1e-3) and out(data.test_x[:2]).shape == (2, 10)
    with pytest.raises(NotApplicable, match=r"the 0\.4 fraction of smallest weights was already zero \(sparsity 0\.5"):
        Prune(amount=0.4).apply(out, _ctx("lenet", data))


def test_structured_prune_composes_after_separable():
    model = _calibrated("lenet")
    sep, *_ = Separable(epochs=0).apply(model, _ctx("lenet", _data("lenet")))
    out, figs = Prune(amount=0.5, structured=True).apply(sep, _ctx("lenet", _data("lenet")))
    assert figs["channels_removed"] > 0 and out(_data("lenet").test_x[:3]).shape == (3, 10)


# --- prune: unstructured --------------------------------------------------------------------------

def test_separable_says_how_little_it_converted_on_a_net_of_1x1_and_grouped_convs():
    """RegNetX: only the stem is a dense k x k conv. The row says it converted 1 of 4 convolutions
    and what share of the convolutions' multiply-adds that was (stem 16x14x14 outputs x 9 taps; the
    1x1s x 16 input channels; the grouped 3x3 x 4 channels x 9 taps)."""
    data = _data("lenet")
    out, figs, notes = Separable(epochs=0).apply(timm_like.RegNetLike().eval(), _ctx("lenet", data))
    pixels = 16 * 14 * 14
    share = pixels * 9 / (pixels * 9 + 2 * pixels * 16 + pixels * 4 * 9)
    assert (figs["convs_replaced"], figs["convs_total"]) == (1, 4)
    assert figs["conv_flops_replaced"] == pytest.approx(share)
    assert notes == (f"converted 1 of 4 convolutions ({share:.0%} of conv FLOPs); the other 3 are 1x1 or grouped",)


def test_separable_with_no_dense_conv_is_not_applicable():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    with pytest.raises(NotApplicable, match=r"looked at 2 convolutions: all 1x1 or grouped"):
        Separable(epochs=0).apply(model.eval(), _ctx("lenet", _data("lenet")))


@pytest.mark.parametrize("amount", [0.3, 0.8])
def test_unstructured_prune_reaches_sparsity_and_leaves_no_hooks(lenet, digits, amount):
    out, figs = Prune(amount=amount).apply(copy.deepcopy(lenet), _ctx("lenet", digits))
    assert figs["sparsity"] == pytest.approx(amount, abs=1e-3)
    assert figs["params_after"] == figs["params_before"] and figs["channels_removed"] == 0
    assert all(not m._forward_pre_hooks for m in out.modules())
    assert not any("_orig" in k or "_mask" in k for k in out.state_dict())
    if amount < 0.5:  # light magnitude pruning of a trained net costs little accuracy
        assert evaluate(out, digits.test_x, digits.test_y) > evaluate(lenet, digits.test_x, digits.test_y) - 0.05


def test_unstructured_finetune_keeps_pruned_weights_zero(lenet, digits):
    out, figs = Prune(amount=0.6, finetune_epochs=1).apply(copy.deepcopy(lenet), _ctx("lenet", digits))
    assert figs["sparsity"] >= 0.6 - 1e-3
    assert evaluate(out, digits.test_x, digits.test_y) > 0.8


# --- separable -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, n, total", [("lenet", 2, 2), ("gap_convnet", 2, 2), ("resnet8", 7, 9)])
def test_separable_replaces_dense_convs(name, n, total):
    model = _calibrated(name)
    out, figs, notes = Separable(epochs=0).apply(copy.deepcopy(model), _ctx(name, _data(name)))
    assert (figs["convs_replaced"], figs["convs_total"], figs["train_s"]) == (n, total, 0)
    assert bool(notes) == (n < total)   # resnet8's two 1x1 shortcut convs stay: the row says so
    assert figs["params_after"] == _params(out) < figs["params_before"] == _params(model)
    dense = [m for m in out.modules() if isinstance(m, nn.Conv2d) and m.groups == 1 and max(m.kernel_size) > 1]
    assert all(m.in_channels == 1 for m in dense)  # only depthwise of a 1-channel input is "dense"
    assert out(_data(name).test_x[:4]).shape == (4, 10)


def test_separable_trains_once_then_loads(lenet, digits):
    first, f1, _ = Separable(epochs=1).apply(copy.deepcopy(lenet), _ctx("lenet", digits))
    again, f2, _ = Separable(epochs=1).apply(copy.deepcopy(lenet), _ctx("lenet", digits))
    assert f1["train_s"] > 0 and f2["train_s"] == f1["train_s"]   # the cached run's cost, not a retrain
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert f1["accuracy_before"] == pytest.approx(evaluate(lenet, digits.test_x, digits.test_y))
    assert evaluate(first, digits.test_x, digits.test_y) > 0.5


# --- distill ---------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")  # the wrong reduction, computed on purpose
def test_distillation_loss_is_batchmean_kl_times_t2_plus_ce():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    t = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 1])
    T, alpha = 2.0, 0.7
    p = torch.softmax(t / T, 1)
    log_q = torch.log_softmax(s / T, 1)
    kl_per_sample = (p * (p.log() - log_q)).sum(1)           # KL(p || q), one number per sample
    ce = -torch.log_softmax(s, 1)[torch.arange(2), y].mean()
    expected = alpha * kl_per_sample.mean() * T * T + (1 - alpha) * ce
    assert distillation_loss(s, t, y, T, alpha).item() == pytest.approx(expected.item(), rel=1e-6)
    wrong = F.kl_div(log_q, p, reduction="mean") * T * T     # divides by classes too: 3x too small here
    assert wrong.item() == pytest.approx(kl_per_sample.mean().item() * T * T / 3, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_log_softmax_outputs_are_valid_logits_for_distillation(temperature):
    z = torch.randn(6, 10) * 3
    assert torch.allclose(torch.softmax(F.log_softmax(z, 1) / temperature, 1),
                          torch.softmax(z / temperature, 1), atol=1e-6)


def test_distill_reports_student_and_alone_accuracy(lenet, digits):
    out, figs = Distill(epochs=1).apply(copy.deepcopy(lenet), _ctx("lenet", digits))
    assert type(out).__name__ == "ConvNet"
    assert figs["student_accuracy"] == pytest.approx(evaluate(out, digits.test_x, digits.test_y))
    assert figs["teacher_accuracy"] == pytest.approx(evaluate(lenet, digits.test_x, digits.test_y))
    assert 0.1 < figs["student_alone_accuracy"] <= 1 and figs["train_s"] > 0
    # Without the teacher's term (alpha=0) the distilled run is the alone run: same recipe, same weights.
    _, plain = Distill(epochs=1, alpha=0.0).apply(copy.deepcopy(lenet), _ctx("lenet", digits))
    assert plain["student_accuracy"] == plain["student_alone_accuracy"] == figs["student_alone_accuracy"]


def test_distill_refuses_a_student_of_another_input_shape():
    data = _data("resnet8")
    with pytest.raises(NotApplicable, match="input"):
        Distill().apply(models.create("resnet8"), _ctx("resnet8", data))


# --- parameter validation --------------------------------------------------------------------------

@pytest.mark.parametrize("pipeline, field", [
    ("prune:amount=1.5", "prune.amount"), ("prune:amount=0", "prune.amount"),
    ("prune:finetune_epochs=-1", "prune.finetune_epochs"), ("prune:method=l2", "prune.method"),
    ("separable:epochs=-2", "separable.epochs"), ("distill:student=vgg", "distill.student"),
    ("distill:temperature=0", "distill.temperature"), ("distill:alpha=2", "distill.alpha"),
    ("compile:mode=fast", "compile.mode"), ("jit:channels_last=maybe", "jit.channels_last"),
])
def test_bad_parameters_name_the_field(pipeline, field):
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        parse(pipeline)


def test_examples_parse():
    for cls in (Fusion, Prune, Separable, Distill):
        for p in cls.examples:
            parse(p)


def test_transforms_that_train_are_skipped_on_random_labels_not_trained_on_them():
    data = load("synthetic", models.spec("lenet").input_shape)
    ctx = _ctx("lenet", data)
    for tech in (Separable(epochs=2), Prune(structured=True, finetune_epochs=1)):
        with pytest.raises(NotApplicable, match=r"needs labelled data \(--data digits"):
            tech.apply(models.create("lenet").eval(), ctx)
    out, figs, _ = Separable(epochs=0).apply(models.create("lenet").eval(), ctx)   # untrained: speed only, allowed
    assert figs["convs_replaced"] == 2 and figs["train_s"] == 0.0


def test_channels_last_reaches_the_runtime_as_its_declared_layout_and_the_baseline_stays_nchw(tmp_path):
    """No side channel: the cell hands the runtime the layout channels_last declares; the eager
    baseline, on the untransformed model, is plain eager on NCHW batches like the run's eager cell."""
    from bench.running.cell import CellSpec, prepare

    # resnet8's 3 input channels: with one channel (lenet) NCHW and NHWC strides cannot be told apart
    p = prepare(CellSpec.of("resnet8", "channels_last", 4, quick=True, data="synthetic"), detect(), tmp_path)
    assert p.placed.is_contiguous(memory_format=torch.channels_last) and not p.placed.is_contiguous()
    assert p.baseline.place(p.x).is_contiguous()
    assert p.ctx.memory_format == "contiguous"
    assert torch.allclose(p.predictor.predict(p.x), p.baseline.predict(p.x), atol=1e-4)
