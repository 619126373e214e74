"""The model contract, checked in an isolated worker before any of the model's cells, and its baseline weights made ready.

What the harness requires of a model (docs/plugins.md, "Benchmark your own model", says the same):

- its factory takes no arguments and returns a `torch.nn.Module`;
- in eval mode, a batch of N images of its declared input shape (C, H, W) gives one floating-point
  tensor of shape (N, K), the logits, where K is the data's number of classes; a model returning a
  tuple, list, dict or object names the element holding the logits (an output selector);
- its weights come from a `--weights` file that fits its state dict exactly, from a factory that
  says `pretrained=True`, or from training here on the run's data.

A model that breaks the contract, or whose training fails, costs that model's rows (error rows with
the reason) and nothing else.
"""

from __future__ import annotations

from typing import Any

import torch

from bench import api
from bench import data as data_mod
from bench.api import Env, UserError

CONTRACT_BATCH = 2   # samples in the contract's forward: >1 so a model that squeezes the batch is caught


def _declare_hint(spec: api.ModelSpec, data: data_mod.Dataset | None = None) -> str:
    shape = "x".join(map(str, spec.input_shape))
    if spec.declared:
        return f"input shape {shape} (from {spec.declared[0]})"
    # The data's own images are the likeliest answer: name them, not a placeholder.
    seen = getattr(data, "source_shape", None)
    real = "x".join(map(str, seen)) if seen else "CxHxW"
    where = f"; the data's images are {real}" if seen else ""
    return (f"input shape {shape} (the default{where}: declare the real one with --input-shape {spec.name}={real}, "
            f"@register_model(input_shape=...) or an input_shape attribute on the factory)")


def check_contract(model_name: str, data: data_mod.Dataset) -> None:
    """One forward of CONTRACT_BATCH test images of the declared input shape; UserError naming what
    is wrong (the forward's own error, a tuple without a selector, a wrong shape or class count)."""
    spec = api.model_spec(model_name)
    try:
        model = api.create_model(model_name)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory
        raise UserError(f"model {model_name}: the factory raised {type(exc).__name__}: {_first_line(exc)}") from exc
    model.eval()
    # Indices wrap around: with --eval-limit 1 there is one test image, and the batch must still hold
    # CONTRACT_BATCH of them for the (N, classes) check to mean anything.
    x = data.test_x[torch.arange(CONTRACT_BATCH) % len(data.test_x)]
    try:
        with torch.inference_mode():
            out = model(x)
    except api.OutputSelectorError as exc:
        raise UserError(f"model {model_name}: --output {spec.output!r} does not fit: {exc}") from exc
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"model {model_name}: forward of {CONTRACT_BATCH} images with {_declare_hint(spec, data)} "
                        f"failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    if isinstance(out, (tuple, list, dict)) and spec.output is None:
        what = (f"a dict with keys {sorted(map(str, out))}" if isinstance(out, dict)
                else f"a {type(out).__name__} of {len(out)} elements")
        raise UserError(f"model {model_name}: forward returns {what}; name the element holding the logits with "
                        f"--output {model_name}=INDEX_OR_KEY (or output= in @register_model)")
    if not isinstance(out, torch.Tensor):
        raise UserError(f"model {model_name}: forward returns {type(out).__name__}; expected a tensor of logits "
                        f"(N, classes), or name the element holding them with --output {model_name}=INDEX_OR_KEY")
    if not out.is_floating_point():
        raise UserError(f"model {model_name}: forward returns a {out.dtype} tensor; expected floating-point logits")
    if out.ndim != 2 or out.shape[0] != CONTRACT_BATCH:
        raise UserError(f"model {model_name}: forward of {CONTRACT_BATCH} images returns shape {tuple(out.shape)}; "
                        f"expected ({CONTRACT_BATCH}, classes), one row of logits per image")
    if data.labelled and out.shape[1] != data.num_classes:
        hint = (f" (or is element {spec.output!r} of the output, chosen with --output, not the logits?)"
                if spec.output is not None else "")
        raise UserError(f"model {model_name}: outputs {out.shape[1]} classes but data {data.name} has "
                        f"{data.num_classes}; use data with {out.shape[1]} classes or a model with "
                        f"{data.num_classes} outputs{hint}")


def ready(model_name: str, data_spec: str, train: bool, env: Env | None = None) -> dict[str, Any]:
    """In a worker: the contract, the --weights file (loaded strictly), and, when `train`, the
    baseline weights trained (or found in the checkpoint cache) so cells only ever load them.
    Returns {"weights": where the baseline's weights come from}. Raises UserError for a broken
    contract (the runner turns any exception into error rows for this model's cells)."""
    from bench.training.cache import load_weights_file, trained, weights_source

    spec = api.model_spec(model_name)
    data = data_mod.load(data_spec, spec.input_shape, spec.num_classes)
    check_contract(model_name, data)
    said: list[str] = []   # handed back to the parent, which logs them: this may run in a worker
    if spec.weights:   # strictly, once per run, saying here (not in every cell) what loading it took
        load_weights_file(api.create_model(model_name), spec.weights, model_name, log=said.append)
    if train:   # loads a --weights file strictly, or trains (or finds the checkpoint)
        try:
            trained(model_name, data)
        except UserError:   # a --weights file that does not fit: its own one-line message
            raise
        except Exception as exc:  # noqa: BLE001 - the user's model: say it was the training that failed
            raise UserError(f"model {model_name}: training on {data.name} failed: {type(exc).__name__}: "
                            f"{_first_line(exc)}") from exc
    return {"weights": weights_source(model_name, data), "said": said}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
