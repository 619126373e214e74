"""Pipeline strings: `prune:amount=0.5,structured=true+quantize@onnx:ep=cpu` -> transforms + one runtime."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from bench import api
from bench.api import UserError
from bench.api import Runtime, Technique, TrainingStrategy, Transform

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Pipeline:
    """A parsed pipeline. `spec` is the user's string, verbatim: it is what results show."""

    spec: str
    transforms: tuple[Transform, ...] = ()
    runtime: Runtime | None = None
    strategy: TrainingStrategy | None = None

    @property
    def scenario(self) -> str:
        return "training" if self.strategy is not None else "inference"

    @property
    def techniques(self) -> tuple[Technique, ...]:
        rest = (self.runtime,) if self.runtime is not None else (self.strategy,)
        return self.transforms + tuple(t for t in rest if t is not None)

    def memory_formats(self) -> tuple[str, ...]:
        """The layout the input batches arrive in at each technique, in pipeline order (bench.api.CONTIGUOUS
        at the start; each transform declares what it hands on). The harness gives each part its own."""
        out, fmt = [], api.CONTIGUOUS
        for t in self.techniques:
            out.append(fmt)
            if isinstance(t, Transform):
                fmt = t.produces_memory_format(fmt)
        return tuple(out)

    def promise(self) -> str:
        """exact when every part promises exact outputs, else approximate (see bench.api.EXACT)."""
        return api.EXACT if all(t.promise() == api.EXACT for t in self.techniques) else api.APPROXIMATE

    def params(self) -> tuple[dict[str, Any], ...]:
        """One entry per technique occurrence, in pipeline order: `{"technique": name, **parameters}`
        (a technique used twice appears twice)."""
        return tuple({"technique": t.name, **t.params()} for t in self.techniques)


def describe_params(cls: type[Technique]) -> str:
    """`amount: float = 0.5, structured: bool = False` for messages and `accelbench list`."""
    hints = typing.get_type_hints(cls)
    parts = []
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):  # test hooks (e.g. fault injection), not user parameters
            continue
        t = hints.get(f.name, Any)
        tname = "|".join(map(str, get_args(t))) if get_origin(t) is Literal else getattr(t, "__name__", str(t))
        default = f.default if f.default is not dataclasses.MISSING else "required"
        parts.append(f"{f.name}: {tname} = {default}")
    return ", ".join(parts) or "no parameters"


def _coerce(raw: str, annotation: Any, where: str) -> Any:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        for choice in args:
            if str(choice).lower() == raw.lower():
                return choice
        raise UserError(f"{where}: {raw!r} is not one of {', '.join(map(str, args))}")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(raw, inner[0], where) if len(inner) == 1 else raw
    if annotation is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise UserError(f"{where}: {raw!r} is not a boolean (use true or false)")
    if annotation in (int, float):
        try:
            value = annotation(raw)
        except ValueError:
            raise UserError(f"{where}: {raw!r} is not {'an integer' if annotation is int else 'a number'}") from None
        return value
    return raw


def parse_technique(token: str, spec: str) -> Technique:
    """`name[:k=v,k=v]` (or `package.module:Class[:k=v,...]`) -> a validated technique instance."""
    token = token.strip()
    head, _, rest = token.partition(":")
    first, _, after = rest.partition(":")
    if head not in api.TECHNIQUES.names() and first and "=" not in first and first.replace(".", "_").isidentifier():
        # `package.module:Class[:k=v,...]`: a user's technique (parameters are always k=v, so a
        # bare identifier after the first ':' can only be an attribute name)
        head, rest = f"{head}:{first}", after
    if not head:
        raise UserError(f"pipeline {spec!r}: empty technique name (techniques: {', '.join(api.TECHNIQUES.names())})")
    try:
        cls = api.technique(head)
    except UserError as exc:
        raise UserError(f"pipeline {spec!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Technique)):
        raise UserError(f"pipeline {spec!r}: {head!r} is not a technique class (subclass techniques.Transform, "
                        f"Runtime or TrainingStrategy)")
    if issubclass(cls, api.Unimportable):
        return cls()   # its parameters cannot be checked; every cell using it is skipped with the import error
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))) if rest else ():
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq:
            raise UserError(f"pipeline {spec!r}: {head}: parameter {item!r} needs a value (key=value)")
        if key not in fields:
            raise UserError(f"pipeline {spec!r}: {head} has no parameter {key!r}; parameters: {describe_params(cls)}")
        if key in kwargs:
            raise UserError(f"pipeline {spec!r}: {head}.{key} is given twice; give each parameter once")
        kwargs[key] = _coerce(raw.strip(), hints.get(key, str), f"pipeline {spec!r}: {head}.{key}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise UserError(f"pipeline {spec!r}: {head}: {exc}") from None


def parse(spec: str) -> Pipeline:
    """Parse and validate a pipeline string before anything runs; errors are UserError."""
    if not spec or not spec.strip():
        raise UserError("empty pipeline; e.g. eager, fusion@onnx:ep=cpu, prune:amount=0.5")
    left, at, right = spec.partition("@")
    if "@" in right:
        raise UserError(f"pipeline {spec!r}: only one '@' (transforms@runtime)")
    parts = [parse_technique(tok, spec) for tok in left.split("+")] if left.strip() else []
    runtime = parse_technique(right, spec) if at else None
    if at and not left.strip():
        raise UserError(f"pipeline {spec!r}: nothing before '@'; write just the runtime, e.g. {right.strip()!r}")

    strategies = [t for t in parts if isinstance(t, TrainingStrategy)]
    if strategies:
        if len(parts) > 1 or at:
            raise UserError(f"pipeline {spec!r}: a training strategy ({strategies[0].name}) stands alone")
        return Pipeline(spec, strategy=strategies[0])
    if runtime is None and parts and isinstance(parts[-1], Runtime):
        runtime, parts = parts[-1], parts[:-1]
        if parts:
            raise UserError(f"pipeline {spec!r}: put the runtime after '@', e.g. "
                            f"{'+'.join(left.split('+')[:-1])}@{left.split('+')[-1]}")
    if runtime is not None and not isinstance(runtime, Runtime):
        runtimes = [n for n, c in api.TECHNIQUES.items() if c.kind == "runtime"]
        raise UserError(f"pipeline {spec!r}: {runtime.name!r} after '@' is a {runtime.kind}, not a runtime; "
                        f"runtimes: {', '.join(runtimes)}")
    for t in parts:
        if not isinstance(t, Transform):
            transforms_ = [n for n, c in api.TECHNIQUES.items() if c.kind == "transform"]
            raise UserError(f"pipeline {spec!r}: {t.name!r} is a {t.kind}, not a transform; "
                            f"transforms: {', '.join(transforms_)}")
    tokens = [tok.strip() for tok in left.split("+")] if left.strip() else []
    tokens = tokens[:len(parts)] + ([right.strip()] if at else tokens[len(parts):] or ["eager"])
    if runtime is None:
        runtime = api.technique("eager")()  # a bare transform runs on eager
    _check_composition(spec, parts, runtime, tokens)
    return Pipeline(spec, tuple(parts), runtime)  # type: ignore[arg-type]


def _check_composition(spec: str, transforms: list[Transform], runtime: Runtime, tokens: list[str]) -> None:
    """Each part must accept what the parts before it produce (a float model and NCHW inputs at the
    start): e.g. torch int8 modules from `quantize` cannot be exported to ONNX or moved to a GPU, and
    ONNX Runtime does not take the NHWC inputs `channels_last` hands on. Refused here, before anything
    runs, naming both parts as the user wrote them (`tokens`, one per part)."""
    produced, source = api.FLOAT, "the trained model"
    layout, layout_source = api.CONTIGUOUS, "the data"
    for part, token in zip([*transforms, runtime], tokens):
        checks = () if isinstance(part, api.Unimportable) else (   # nothing is known of what it takes
            (produced, part.accepts, api.FORMAT_WORDS, source, "accepts"),
            (layout, part.accepts_memory_formats, api.MEMORY_FORMAT_WORDS, layout_source, "accepts_memory_formats"))
        for have, takes, words, made_by, attr in checks:
            if have not in takes:
                takers = [n for n, c in api.TECHNIQUES.items() if have in getattr(c, attr, ()) and c.kind == part.kind]
                raise UserError(f"pipeline {spec!r}: {token} cannot take {words[have]}, which {made_by} produces "
                                f"(it accepts {', '.join(words[f] for f in takes)}); "
                                f"{part.kind}s that take them: {', '.join(takers) or 'none'}")
        if isinstance(part, Transform):
            produced, source = part.produces(), token
            if part.produces_memory_format(layout) != layout:
                layout, layout_source = part.produces_memory_format(layout), token
