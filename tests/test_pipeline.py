"""Pipeline strings parse into transforms + one runtime; bad ones are refused before anything runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

import techniques
from bench.api import UserError
from bench.pipeline import parse


@dataclass(frozen=True)
class _Knob(techniques.Transform):
    """Test transform with one parameter of each type."""

    name = "t_knob"
    amount: float = 0.5
    steps: int = 1
    flag: bool = False
    mode: Literal["a", "b"] = "a"

    def __post_init__(self):
        if not 0 < self.amount < 1:
            raise ValueError(f"t_knob.amount must be in (0, 1), got {self.amount}")


@pytest.fixture(autouse=True, scope="module")
def _registered():
    techniques.load_builtin()
    techniques.register(_Knob)
    yield
    techniques.unregister("t_knob")


def test_bare_runtime_and_bare_transform():
    p = parse("eager")
    assert p.transforms == () and p.runtime.name == "eager" and p.scenario == "inference"
    p = parse("t_knob")
    assert [t.name for t in p.transforms] == ["t_knob"] and p.runtime.name == "eager"


def test_parameters_are_coerced_to_their_types():
    p = parse("t_knob:amount=0.25,steps=3,flag=true,mode=B+t_knob@eager")
    first, second = p.transforms
    assert (first.amount, first.steps, first.flag, first.mode) == (0.25, 3, True, "b")
    assert second == _Knob()
    assert p.spec == "t_knob:amount=0.25,steps=3,flag=true,mode=B+t_knob@eager"  # verbatim
    # One entry per occurrence, in order: a technique used twice is recorded twice.
    assert p.params() == ({"technique": "t_knob", "amount": 0.25, "steps": 3, "flag": True, "mode": "b"},
                          {"technique": "t_knob", "amount": 0.5, "steps": 1, "flag": False, "mode": "a"},
                          {"technique": "eager"})


@pytest.mark.parametrize("spec, message", [
    ("", "empty pipeline"),
    ("nope", "unknown technique 'nope'; known techniques: .*eager"),
    ("t_knob:amont=0.2", "t_knob has no parameter 'amont'; parameters: amount: float = 0.5"),
    ("t_knob:amount=lots", "t_knob.amount: 'lots' is not a number"),
    ("t_knob:steps=1.5", "t_knob.steps: '1.5' is not an integer"),
    ("t_knob:flag=maybe", "'maybe' is not a boolean"),
    ("t_knob:mode=c", "t_knob.mode: 'c' is not one of a, b"),
    ("t_knob:amount=2", "t_knob.amount must be in \\(0, 1\\), got 2.0"),
    ("t_knob:amount", "parameter 'amount' needs a value"),
    ("t_knob@t_knob", "'t_knob' after '@' is a transform, not a runtime; runtimes: .*eager"),
    ("eager@eager", "'eager' is a runtime, not a transform"),
    ("t_knob+eager", "put the runtime after '@', e.g. t_knob@eager"),
    ("@eager", "nothing before '@'"),
    ("t_knob@eager@eager", "only one '@'"),
])
def test_bad_pipelines_name_the_bad_part(spec, message):
    with pytest.raises(UserError, match=message):
        parse(spec)


def test_user_technique_by_module_spec():
    p = parse("test_pipeline:_Knob:amount=0.3")
    assert p.transforms[0].amount == 0.3


def test_user_technique_spec_that_fails_to_import_is_named():
    with pytest.raises(UserError, match="technique spec 'missing_mod:Thing': cannot import module 'missing_mod'"):
        parse("missing_mod:Thing")


@pytest.mark.parametrize("spec", ["channels_last@onnx", "channels_last@onnx:ep=cpu,quant=dynamic",
                                  "channels_last+t_knob@onnx:ep=cpu"])
def test_channels_last_before_onnx_is_refused_when_parsed_naming_both(spec):
    """The layout channels_last hands on is a declared product; ONNX Runtime does not take it."""
    with pytest.raises(UserError) as err:
        parse(spec)
    msg = str(err.value)
    assert "\n" not in msg
    runtime_token = spec.partition("@")[2]
    assert (f"{runtime_token} cannot take channels_last (NHWC) inputs, which channels_last produces "
            f"(it accepts NCHW (contiguous) inputs); runtimes that take them: ") in msg
    takers = msg.rpartition("runtimes that take them: ")[2].split(", ")
    assert {"eager", "jit", "compile"} <= set(takers) and "onnx" not in takers


def test_the_layout_each_part_receives_is_what_the_parts_before_it_declare():
    from bench.api import CHANNELS_LAST, CONTIGUOUS
    assert parse("onnx:ep=cpu").memory_formats() == (CONTIGUOUS,)
    assert parse("t_knob+channels_last+t_knob@jit").memory_formats() == (CONTIGUOUS, CONTIGUOUS, CHANNELS_LAST,
                                                                          CHANNELS_LAST)
    assert parse("channels_last").runtime.name == "eager"


def test_a_runtime_that_narrows_its_layouts_is_held_to_them():
    @dataclass(frozen=True)
    class _NchwOnly(techniques.Runtime):
        name = "t_nchw_only"
        accepts_memory_formats = (techniques.CONTIGUOUS,)

    techniques.register(_NchwOnly)
    try:
        assert parse("t_knob@t_nchw_only").runtime.name == "t_nchw_only"
        with pytest.raises(UserError, match="t_nchw_only cannot take channels_last \\(NHWC\\) inputs"):
            parse("channels_last+t_knob@t_nchw_only")
    finally:
        techniques.unregister("t_nchw_only")
