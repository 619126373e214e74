"""The search space of `accelbench recommend`: pipelines built from the technique registry and its composition rules."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from itertools import permutations
from typing import Any, Literal, get_args, get_origin

from bench import api
from bench.api import Env, Runtime, Technique, Transform, UserError
from bench.pipeline import Pipeline, parse

# At most this many transforms before the runtime: single techniques and pairs cover what the registry's
# parts do alone and together; three or more multiply the space (about 8 transform variants give 8^3 x
# runtimes) for compositions whose gains rarely add up on a small ConvNet.
MAX_TRANSFORMS = 2


@dataclass(frozen=True)
class Candidate:
    """One pipeline of the search: its string (as `accelbench run --pipeline` takes it), the parsed
    pipeline, and the parts it is made of (their own pipeline strings, for the search's priors)."""

    spec: str
    pipeline: Pipeline
    parts: tuple[str, ...]

    @property
    def trains(self) -> bool:
        """Whether preparing it trains a network (any part's `Technique.trains`): measured last."""
        return any(t.trains() for t in self.pipeline.techniques)

    @property
    def approximate(self) -> bool:
        return self.pipeline.promise() == api.APPROXIMATE


@dataclass(frozen=True)
class Space:
    """The candidates in search order (runtimes alone, then one transform on eager, then compositions),
    and the technique variants left out because they cannot run here (variant -> why)."""

    candidates: tuple[Candidate, ...]
    unavailable: tuple[tuple[str, str], ...] = ()

    def singles(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if len(c.parts) == 1)

    def compositions(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if len(c.parts) > 1)


def _choices(cls: type[Technique], field: dataclasses.Field, hints: dict[str, Any]) -> list[Any]:
    """The values a search tries for one parameter besides its default: every choice of a Literal,
    the other boolean. Numbers and free text keep their default (and the values the technique's own
    examples use, added by `variants`): a grid over a continuous parameter is the user's to ask for."""
    t = hints.get(field.name)
    if get_origin(t) is Literal:
        return list(get_args(t))
    if t is bool:
        return [False, True]
    return []


def variants(cls: type[Technique], env: Env) -> tuple[list[Technique], list[tuple[str, str]]]:
    """The parameter settings of one technique a search tries: its defaults, each parameter changed
    alone to each of its other choices (one factor at a time, so the count grows with the sum of the
    choices, not their product), and the settings its `examples` name. Returns (the settings that can
    run here, in that order, deduplicated; (label, why) of those that cannot)."""
    if issubclass(cls, api.Unimportable):
        return [], [(cls.name, cls.reason)]
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    out: dict[str, Technique] = {}
    tried: list[Technique] = []
    try:
        base = cls()
    except (TypeError, ValueError):   # a parameter without a default: only its examples are searched
        base = None
    if base is not None:
        tried.append(base)
        for f in fields:
            for value in _choices(cls, f, hints):
                if value != getattr(base, f.name):
                    try:
                        tried.append(dataclasses.replace(base, **{f.name: value}))
                    except (TypeError, ValueError):   # a combination the technique refuses
                        pass
    for example in cls.examples:
        try:
            pipe = parse(example)
        except UserError:
            continue
        tried += [t for t in pipe.techniques if type(t) is cls]
    missing: dict[str, str] = {}
    for t in tried:
        label = t.label()
        if label in out or label in missing:
            continue
        why = t.unavailable(env)
        if why:
            missing[label] = why
        else:
            out[label] = t
    return list(out.values()), sorted(missing.items())


def space(env: Env, max_transforms: int = MAX_TRANSFORMS) -> Space:
    """Every inference pipeline of the registry's transforms and runtimes that can run here: each
    runtime setting alone, each transform setting on eager, and up to `max_transforms` transforms of
    different techniques before each runtime setting. A composition is kept only when `bench.pipeline.parse`
    accepts it (each part takes what the parts before it produce: e.g. torch int8 modules do not go to
    ONNX), so a technique registered with its accepts/produces rules joins the search with no edit here.
    Raises UserError when max_transforms is below 0."""
    if max_transforms < 0:
        raise UserError(f"--max-transforms must be >= 0, got {max_transforms}")
    transforms: list[Technique] = []
    runtimes: list[Technique] = []
    unavailable: list[tuple[str, str]] = []
    for _, cls in api.TECHNIQUES.items():
        if cls.kind not in ("transform", "runtime"):
            continue
        found, missing = variants(cls, env)
        unavailable += missing
        (transforms if cls.kind == "transform" else runtimes).extend(found)
    runtimes = [r for r in runtimes if isinstance(r, Runtime)]
    transforms = [t for t in transforms if isinstance(t, Transform)]
    out: dict[str, Candidate] = {}

    def add(parts: tuple[Technique, ...], runtime: Technique) -> None:
        labels = tuple(t.label() for t in parts)
        spec = "+".join(labels) + (f"@{runtime.label()}" if parts and runtime.name != "eager" else "")
        spec = spec or runtime.label()
        if spec in out:
            return
        try:
            pipe = parse(spec)
        except UserError:   # a composition the parts' accepts/produces rules refuse
            return
        out[spec] = Candidate(spec, pipe, labels + ((runtime.label(),) if runtime.name != "eager" or not parts
                                                    else ()))

    eager = next((r for r in runtimes if r.name == "eager"), None)
    for r in runtimes:
        add((), r)
    if eager is not None:
        for t in transforms:
            add((t,), eager)
    for n in range(1, max_transforms + 1):
        for combo in permutations(transforms, n):
            if len({t.name for t in combo}) < n:   # one setting per technique in a pipeline
                continue
            for r in runtimes:
                if n == 1 and r is eager:
                    continue
                add(combo, r)
    return Space(tuple(out.values()), tuple(unavailable))
