"""Model and technique registries: lookup, duplicates, unknown names, user specs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import models
import techniques
from bench.api import UserError
from bench.api import Registry


def test_registry_rejects_duplicates_and_lists_known_names():
    reg: Registry[int] = Registry("widget", "accelbench.test-widgets")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a", 2)
    assert reg.get("a") == 1  # the first registration survives
    with pytest.raises(UserError, match="unknown widget 'b'; known widgets: a"):
        reg.get("b")


def test_reference_models_are_registered():
    assert {"convnet", "lenet", "lenet_bn", "gap_convnet", "resnet8"} <= set(models.list())


@pytest.mark.parametrize("name", models.list())
def test_every_model_maps_its_input_to_ten_logits(name):
    spec = models.spec(name)
    model = models.create(name).eval()
    assert spec.factory.__doc__, f"{name} needs a docstring giving its provenance"
    for batch in (1, 3):  # batch 3 catches a view(-1, C) that multiplies the batch
        out = model(torch.randn(batch, *spec.fast_input_shape))
        assert out.shape == (batch, spec.num_classes)


def test_unknown_model_lists_known_names():
    with pytest.raises(UserError, match="unknown model 'lenet5'; known models: convnet, gap_convnet, lenet"):
        models.create("lenet5")


def test_duplicate_model_name_raises():
    with pytest.raises(ValueError, match="already registered"):
        models.register("lenet")(lambda: nn.Linear(1, 1))


def test_user_model_by_module_spec():
    model = models.create("torch.nn:Identity")
    assert isinstance(model, nn.Identity)


def test_user_model_spec_that_fails_to_import_names_it():
    with pytest.raises(UserError, match="model spec 'no_such_pkg.mod:factory': cannot import module 'no_such_pkg.mod'"):
        models.create("no_such_pkg.mod:factory")
    with pytest.raises(UserError, match="has no attribute 'nope'"):
        models.create("torch.nn:nope")


def test_model_registration_is_one_decorator():
    @models.register("tiny_test_net", input_shape=(1, 8, 8))
    def tiny() -> nn.Module:
        """A test net."""
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    try:
        assert "tiny_test_net" in models.list()
        assert models.spec("tiny_test_net").input_shape == (1, 8, 8)
    finally:
        models.unregister("tiny_test_net")


@pytest.mark.parametrize("name", techniques.names())
def test_every_technique_is_a_well_formed_frozen_dataclass(name):
    cls = techniques.get(name)
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    assert cls.name == name and cls.kind in techniques.KINDS
    assert cls.__doc__ and cls.__module__.startswith("techniques.")
    inst = cls()  # every parameter has a default
    assert dataclasses.asdict(inst) == inst.params()
    for fig, unit in cls.figures.items():
        assert isinstance(fig, str) and isinstance(unit, str) and unit, f"{name}.{fig} needs a unit"
    from bench.pipeline import parse
    for example in cls.examples:
        parse(example)  # every example pipeline parses


def test_duplicate_technique_name_raises():
    @dataclasses.dataclass(frozen=True)
    class Again(techniques.Runtime):
        """A second eager."""
        name = "eager"

    with pytest.raises(ValueError, match="technique 'eager' is already registered"):
        techniques.register(Again)


def test_technique_must_be_a_dataclass_with_a_kind():
    class NotDataclass(techniques.Runtime):
        name = "x_not_dc"

    with pytest.raises(TypeError, match="must be a @dataclass"):
        techniques.register(NotDataclass)


def test_user_model_module_with_register_decorator_keeps_its_input_shape(tmp_path, monkeypatch):
    (tmp_path / "my_nets_for_test.py").write_text(
        "import models\nfrom torch import nn\n\n"
        "@models.register('my_wide_test_net', input_shape=(3, 32, 32))\n"
        "def wide():\n    '''A test net.'''\n    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        spec = models.spec("my_nets_for_test:wide")
        assert spec.name == "my_nets_for_test:wide" and spec.input_shape == (3, 32, 32)
        assert models.create("my_nets_for_test:wide")(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    finally:
        models.unregister("my_wide_test_net")
