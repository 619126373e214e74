"""The types a run.json document's fields must have, checked before --resume plans anything from it.

A run.json is written by the harness, but a user may have edited it, a tool may have rewritten it, or
another program's file may sit in the folder: a field of the wrong type must be one line naming
run.json and the field, not a truthy string taken for `true` or a batch size of 0 reaching a worker.
"""

from __future__ import annotations

from typing import Any

from bench.api import UserError

_BOOLEANS = ("quick", "serving_only", "loadgen_official", "no_history")
_OPTIONAL_TEXTS = ("scenario", "shard")


def check_types(doc: dict[str, Any], where: str) -> None:
    """UserError starting with `where` for the first field of `doc` whose type or value cannot be a run's."""
    for key in _BOOLEANS:
        if key in doc and not isinstance(doc[key], bool):
            raise UserError(f"{where}: {key} must be true or false, got {doc[key]!r}")
    for key in _OPTIONAL_TEXTS:
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise UserError(f"{where}: {key} must be a string or null, got {doc[key]!r}")
    if not isinstance(doc.get("data"), str):
        raise UserError(f"{where}: data must be a data spec string (e.g. digits), got {doc.get('data')!r}")
    sizes = doc.get("batch_sizes")
    sizes = [sizes] if isinstance(sizes, int) else sizes
    if isinstance(sizes, list) and any(isinstance(b, int) and not isinstance(b, bool) and b < 1 for b in sizes):
        raise UserError(f"{where}: batch_sizes must be integers >= 1, got {doc['batch_sizes']!r}")
    settings = doc.get("model_settings")
    if isinstance(settings, dict):
        for model, values in settings.items():
            if isinstance(values, dict):
                _check_model_settings(model, values, where)


def _check_model_settings(model: str, values: dict[str, Any], where: str) -> None:
    shape = values.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3
                                  and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
        raise UserError(f"{where}: model_settings {model}: input_shape must be three integers >= 1 "
                        f"(channels, height, width), got {shape!r}")
    output = values.get("output")
    if output is not None and (isinstance(output, bool) or not isinstance(output, (int, str))):
        raise UserError(f"{where}: model_settings {model}: output must be an index or a key, got {output!r}")
    weights = values.get("weights")
    if weights is not None and not isinstance(weights, str):
        raise UserError(f"{where}: model_settings {model}: weights must be a file path, got {weights!r}")
