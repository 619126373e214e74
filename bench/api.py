"""The interface between the harness and its plugins: techniques, models, their registries and errors.

This module imports nothing else from the project. Techniques (`techniques/`, or a user's package)
and models depend on it; the harness depends on it; nothing here depends back. The harness reaches
the built-in techniques and models the way it reaches a user's: by name, through the registries
below, which import the `techniques` and `models` packages on first use like any other plugin.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, ClassVar, Generic, TypeVar

import torch
from torch import nn

T = TypeVar("T")

# --- errors -----------------------------------------------------------------------------------


class UserError(Exception):
    """Bad input from the user: the CLI prints it as one line and exits 2, no traceback."""


NEEDS_LABELS = ("needs labelled data (--data digits, mnist:DIR, imagefolder:DIR, cifar10:DIR, npz:FILE or a "
                "module's factory): training on synthetic data's random labels would only teach noise")


class NotApplicable(Exception):
    """Raise from apply/prepare/run when the technique does not fit this model (e.g. nothing to
    fuse, a net that cannot be split into stages): the cell becomes `skipped` with this reason."""


# --- a registry -------------------------------------------------------------------------------


class Registry(Generic[T]):
    """Plain dict behind a decorator. `what` names the entries in messages ("model", "technique").

    `builtin` is the package whose modules register the built-in entries; it is imported on first
    lookup. A module there whose own import fails is handed to `on_broken(module, exc)`, which may
    register a stand-in (techniques do: an entry that says why it cannot run), so one broken plugin
    never takes the others down.
    """

    def __init__(self, what: str, entry_point_group: str, builtin: str | None = None,
                 on_broken: Callable[[str, BaseException], None] | None = None) -> None:
        self.what = what
        self.group = entry_point_group
        self.builtin = builtin
        self.on_broken = on_broken
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, obj: T) -> T:
        if name in self._items:
            # A silent overwrite would label one thing's results with another's name.
            raise ValueError(f"{self.what} {name!r} is already registered ({self._items[name]!r}); pick another name")
        self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def load(self) -> None:
        """Import the built-in package (every public module in it) and the entry points, once."""
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.builtin) if self.builtin else None
        if package is not None and not getattr(package, "ACCELBENCH_BUILTIN", False):
            # e.g. onnxruntime puts its own transformers/ (which holds a `models` package) on sys.path
            raise RuntimeError(f"import {self.builtin!r} found {getattr(package, '__file__', package)}, not "
                               f"accelbench's {self.what}s package; call bench.api.load_registries() before "
                               f"importing libraries that add folders to sys.path")
        for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
            if info.name.startswith("_"):
                continue
            module = f"{self.builtin}.{info.name}"
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - an optional dependency missing, a bug in a plugin
                if self.on_broken is None:
                    raise
                self.on_broken(module, exc)
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                self._items[ep.name] = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not take the tool down
                if self.on_broken is None:
                    raise UserError(f"{self.what} entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
                self.on_broken(ep.name, exc)

    def names(self) -> list[str]:
        self.load()
        return sorted(self._items)

    def get(self, name: str) -> T:
        """Look up by registered name or by a `package.module:object` spec."""
        if ":" in name:  # registered names never contain ':'
            return load_object(name, self.what, self.on_broken)
        self.load()
        if name not in self._items:
            raise UserError(f"unknown {self.what} {name!r}; known {self.what}s: {', '.join(self.names())}"
                            f" (or give a package.module:object spec)")
        return self._items[name]

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._items[n]) for n in self.names()]

    def names_loaded(self) -> list[str]:
        """Names registered so far, without importing anything."""
        return list(self._items)

    def registered(self) -> list[T]:
        """Entries registered so far, without importing anything (to match a factory to its spec)."""
        return list(self._items.values())


def load_object(spec: str, what: str, on_broken: Callable[[str, BaseException], Any] | None = None) -> Any:
    """Import `package.module:object` or `path/to/file.py:object`. A module that does not exist is a
    UserError naming the spec; a module that exists but fails to import (an optional dependency
    missing) goes to `on_broken` when given, whose return value stands in for the object."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"{what} spec {spec!r} must look like package.module:object or path/to/file.py:object")
    try:
        module = import_plugin(module_name)
    except UserError:
        raise
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if on_broken is None or module_name == missing or module_name.startswith(missing + "."):
            raise UserError(f"{what} spec {spec!r}: cannot import module {module_name!r}: {exc}") from exc
        return on_broken(spec, exc)
    except Exception as exc:  # noqa: BLE001
        if on_broken is None:
            raise UserError(f"{what} spec {spec!r}: cannot import module {module_name!r}: "
                            f"{type(exc).__name__}: {exc}") from exc
        return on_broken(spec, exc)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{what} spec {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


# Modules of the user's that this process imported through a spec, in order. A worker process
# imports the same ones before it reads anything, so a model or technique that a user's module
# registers as a side effect is known there too.
_PLUGINS: list[str] = []


def import_plugin(module: str) -> Any:
    """Import a module by dotted name, or a `.py` file by path (under a stable private name)."""
    if module.endswith(".py"):
        import hashlib
        import os
        import sys
        path = os.path.abspath(os.path.expanduser(module))
        if not os.path.isfile(path):
            raise UserError(f"{module}: no such file")
        name = "accelbench_user_" + hashlib.sha256(path.encode()).hexdigest()[:10] + "_" + \
            "".join(c if c.isalnum() else "_" for c in os.path.basename(path)[:-3])
        mod = sys.modules.get(name)
        if mod is None:
            # The file's own folder, as `python file.py` would have it: it may import its neighbours.
            if os.path.dirname(path) not in sys.path:
                sys.path.append(os.path.dirname(path))
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod   # before exec: dataclasses and pickling look the module up by name
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                del sys.modules[name]
                raise
    else:
        mod = importlib.import_module(module)
    if module not in _PLUGINS:
        _PLUGINS.append(module)
    return mod


def plugin_modules() -> list[str]:
    """The user's modules imported so far (dotted names or .py paths), for a worker to import first."""
    return list(_PLUGINS)


# --- what techniques see ----------------------------------------------------------------------


@dataclass(frozen=True)
class Env:
    """What this machine can do, as techniques need to know it (see bench.env.detect)."""

    cuda: bool = False
    cuda_device: str | None = None
    cuda_count: int = 0
    cpu_count: int = 1
    ort_providers: tuple[str, ...] = ()
    has_cxx: bool = False


@dataclass
class Context:
    """What a technique may use while it prepares: the data (for fine-tuning or calibration), the
    model's name and input shape, the machine, and whether this is a --quick run."""

    model_name: str
    data: Any                      # bench.data.Dataset (its `spec` is what another process loads it by)
    env: Env
    batch_size: int = 1
    quick: bool = False
    seed: int = 0
    scratch_dir: Any = None        # a pathlib.Path private to this cell, for exported files
    threads: int = 0               # torch intra-op threads of the cell (0: torch's default)
    # The layout the pipeline's inputs arrive in: a transform (channels_last) may set it, and torch
    # runtimes then place every batch in it, outside the timed call, as a NHWC data loader would.
    memory_format: str = "contiguous"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.data.input_shape

    def place_input(self, x: torch.Tensor) -> torch.Tensor:
        """`x` in the pipeline's input layout (NCHW, or NHWC strides for channels_last)."""
        if self.memory_format == "channels_last" and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def _identity(x: Any) -> Any:
    return x


def _noop() -> None:
    return None


@dataclass
class Predictor:
    """A prepared model: `run` is the timed call; `place` (input to device) and `fetch` (output back
    to CPU logits) stay outside the timed region; `synchronize` is called inside it (CUDA)."""

    run: Callable[[Any], Any]
    device: str = "cpu"
    place: Callable[[torch.Tensor], Any] = _identity
    fetch: Callable[[Any], torch.Tensor] = _identity
    synchronize: Callable[[], None] = _noop
    providers: tuple[str, ...] = ()         # for ONNX Runtime: what session.get_providers() says ran
    model_bytes: int | None = None          # serialized size when the runtime owns its own format
    figures: dict[str, float] = field(default_factory=dict)
    reset_peak_memory: Callable[[], None] | None = None   # device memory accounting (CUDA)
    peak_memory_mb: Callable[[], float] | None = None
    precision: str = "fp32"                 # what the arithmetic runs in: picks the matmul peak it is compared with
    threads: int | None = None              # the runtime's own thread pool (ONNX Runtime intra-op); None: torch's
    notes: tuple[str, ...] = ()             # what qualifies this predictor's figures (e.g. an exporter fallback)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        out = self.run(self.place(x))
        self.synchronize()
        return self.fetch(out)


# What a module is made of, as a transform produces it and a runtime (or the next transform) accepts
# it. A pipeline whose parts do not fit is refused when it is parsed, before anything runs.
FLOAT = "float"                # ordinary float nn.Modules
TORCH_INT8 = "torch_int8"      # torch.ao quantized modules: CPU kernels only, no ONNX exporter
FORMAT_WORDS = {FLOAT: "float modules", TORCH_INT8: "torch.ao int8 modules"}

EXACT, APPROXIMATE = "exact", "approximate"
# An exact pipeline's logits may differ from eager's by float reassociation only: at most this much,
# relative to the largest eager logit (and never less than this much absolute).
EXACT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Technique:
    """Base of every technique. Fields are parameters; validate them in __post_init__ with a
    ValueError naming the field, the allowed values and the value received."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    figures: ClassVar[dict[str, str]] = {}   # extra figures it reports -> their units
    # Pipelines this technique adds to the default matrix (`accelbench run` without --pipeline),
    # and extra models it is shown on in --quick runs (which otherwise use lenet alone).
    examples: ClassVar[tuple[str, ...]] = ()
    quick_models: ClassVar[tuple[str, ...]] = ()
    # Python modules the technique imports (exporters, runtimes). The cell imports them before it
    # reads its baseline memory, so peak_mem_mb counts the model and the runtime's work, not the
    # one-off cost of loading a library's code.
    heavy_imports: ClassVar[tuple[str, ...]] = ()
    # Module formats it takes as input (see FORMAT_WORDS).
    accepts: ClassVar[tuple[str, ...]] = (FLOAT,)
    # What it promises about outputs: EXACT (equal to eager's within EXACT_TOLERANCE: a faster way to
    # compute the same function) or APPROXIMATE (a different function, judged by its accuracy).
    fidelity: ClassVar[str] = "approximate"

    def promise(self) -> str:
        """EXACT or APPROXIMATE for these parameters (e.g. onnx is exact in fp32, approximate in int8)."""
        return self.fidelity

    def unavailable(self, env: Env) -> str | None:
        """Why this cannot run on this machine (no CUDA, provider missing...), or None."""
        return None

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def label(self) -> str:
        """`name:k=v,...` with the parameters that differ from their defaults."""
        diff = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                if not f.name.startswith("_") and f.default is not dataclasses.MISSING
                and getattr(self, f.name) != f.default]
        return self.name + (":" + ",".join(diff) if diff else "")


class Transform(Technique):
    kind: ClassVar[str] = "transform"

    def produces(self) -> str:
        """The format of the module `apply` returns (FLOAT unless overridden)."""
        return FLOAT

    def apply(self, model: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, float]]:
        """Return the new module (in eval mode) and the figures declared in `figures`."""
        raise NotImplementedError


class Runtime(Technique):
    kind: ClassVar[str] = "runtime"

    def prepare(self, model: nn.Module, ctx: Context) -> Predictor:
        raise NotImplementedError


class TrainingStrategy(Technique):
    kind: ClassVar[str] = "training"

    def run(self, ctx: Context) -> dict[str, Any]:
        """Train `ctx.model_name` from scratch under this strategy; return training columns."""
        raise NotImplementedError

    def run_rank(self, rank: Any) -> dict[str, Any]:
        """What one process of a distributed launch runs (bench.training.distributed.Rank): only
        strategies that launch ranks implement it. The launcher finds it through the registry, so a
        new distributed strategy needs no edit of the harness."""
        raise NotImplementedError(f"{self.name} does not run distributed ranks")


KINDS = ("transform", "runtime", "training")


@dataclass(frozen=True)
class Unimportable(Transform, Runtime):
    """Stands in for a technique module that failed to import: it parses in any position, and every
    cell that uses it is skipped with the import error as its reason."""

    kind: ClassVar[str] = "unimportable"
    reason: ClassVar[str] = ""

    def unavailable(self, env: Env) -> str | None:
        return self.reason

    def __reduce__(self):
        # The class is made at run time, so pickle (a cell crossing to its worker) rebuilds it by value.
        return (_unimportable, (self.name, self.reason))


def _unimportable_class(name: str, reason: str) -> type[Technique]:
    cls = type(f"Unimportable_{name}", (Unimportable,), {"name": name, "reason": reason, "__doc__": reason})
    return dataclass(frozen=True)(cls)


def _unimportable(name: str, reason: str) -> Technique:
    return _unimportable_class(name, reason)()


def _technique_broken(module: str, exc: BaseException) -> type[Technique]:
    short = module.rsplit(".", 1)[-1] if ":" not in module else module
    why = f"cannot import {module}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    cls = _unimportable_class(short, why)
    if ":" not in module and short not in TECHNIQUES.names_loaded():
        TECHNIQUES.register(short, cls)
    return cls


TECHNIQUES: Registry[type[Technique]] = Registry("technique", "accelbench.techniques", "techniques", _technique_broken)


def register(cls: type[Technique]) -> type[Technique]:
    """Class decorator: register a technique under its `name`. A duplicate name raises."""
    params = cls.__dict__.get("__dataclass_params__")  # set on the class itself by @dataclass
    if params is None or not params.frozen:
        raise TypeError(f"{cls.__qualname__} must be a @dataclass(frozen=True) (its fields are its parameters)")
    if not cls.name or cls.kind not in KINDS:
        raise TypeError(f"{cls.__qualname__} needs a `name` and a kind among {KINDS} (subclass Transform, "
                        f"Runtime or TrainingStrategy)")
    TECHNIQUES.register(cls.name, cls)
    return cls


# --- models -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its factory, the input it expects (channels, height, width), its classes,
    which element of its output holds the logits, and where its weights come from."""

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    train: tuple[tuple[str, object], ...] = ()  # TrainConfig overrides that make this net reach its accuracy
    # For a model whose forward returns a tuple/list (an int index) or a dict or object (a key or
    # attribute name): which element is the (N, num_classes) logits.
    output: int | str | None = None
    pretrained: bool = False    # the factory returns trained weights: never trained here
    weights: str = ""           # a state dict file (torch.save or .safetensors) to load instead of training
    declared: tuple[str, ...] = ()   # where input_shape came from, for messages ("@register_model", ...)
    # A smaller input the architecture also takes (a fully convolutional net before a global pool):
    # fast runs and tests use it; FLOPs scale with it. None: only input_shape.
    small_input_shape: tuple[int, int, int] | None = None
    student: str | None = None  # the registered net `distill` trains by default to imitate this one

    @property
    def fast_input_shape(self) -> tuple[int, int, int]:
        return self.small_input_shape or self.input_shape


MODELS: Registry[Any] = Registry("model", "accelbench.models", "models")

# Per-run settings of a model from the command line (--input-shape, --output, --weights): name ->
# ModelSpec fields. Worker processes receive them (model_overrides()) and set them before anything.
_OVERRIDES: dict[str, dict[str, Any]] = {}
_OVERRIDABLE = ("input_shape", "num_classes", "output", "weights", "pretrained")


def register_model(name: str, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
                   output: int | str | None = None, pretrained: bool = False,
                   small_input_shape: tuple[int, int, int] | None = None, student: str | None = None, **train):
    """Decorator: `@register("lenet")` on a zero-argument factory returning an nn.Module.

    `output` selects the logits from a tuple/dict output; `pretrained=True` says the factory returns
    trained weights (never trained here); `small_input_shape` a smaller input the net also takes
    (for fast runs and tests; `--input-shape` picks any); `student` the registered net `distill`
    trains by default for this teacher (else convnet). Other keyword arguments override
    bench.training.loop.TrainConfig for this model.
    """

    def wrap(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        MODELS.register(name, ModelSpec(name, factory, tuple(input_shape), num_classes, tuple(sorted(train.items())),
                                        output, pretrained, declared=("@register_model",),
                                        small_input_shape=tuple(small_input_shape) if small_input_shape else None,
                                        student=student))
        return factory

    return wrap


def configure_models(overrides: dict[str, dict[str, Any]]) -> None:
    """Set this process's per-model overrides (replacing any before); fields as in ModelSpec."""
    for name, fields in overrides.items():
        bad = set(fields) - set(_OVERRIDABLE)
        if bad:
            raise ValueError(f"model {name!r}: cannot override {sorted(bad)}; allowed: {', '.join(_OVERRIDABLE)}")
    _OVERRIDES.clear()
    for name, fields in overrides.items():
        fields = dict(fields)
        if "input_shape" in fields:   # JSON (run.json) has lists
            fields["input_shape"] = tuple(int(v) for v in fields["input_shape"])
        _OVERRIDES[name] = fields


def model_overrides() -> dict[str, dict[str, Any]]:
    """This process's per-model overrides, to hand to a worker process (plain data, pickles)."""
    return {n: dict(f) for n, f in _OVERRIDES.items()}


def model_spec(name: str) -> ModelSpec:
    """The ModelSpec for a registered name, an entry point, or a `package.module:factory` /
    `path/to/file.py:factory` spec, with this run's command-line overrides applied."""
    obj = MODELS.get(name)
    if isinstance(obj, ModelSpec):
        spec = obj
    else:
        # A factory from an entry point or a module spec. If importing it ran @register, use that
        # registration; else the factory may carry input_shape, num_classes, output, pretrained.
        spec = next((dataclasses.replace(r, name=name) for r in MODELS.registered()
                     if isinstance(r, ModelSpec) and r.factory is obj), None)
        if spec is None:
            has = hasattr(obj, "input_shape")
            spec = ModelSpec(name, obj, tuple(getattr(obj, "input_shape", (1, 28, 28))),
                             int(getattr(obj, "num_classes", 10)), output=getattr(obj, "output", None),
                             pretrained=bool(getattr(obj, "pretrained", False)),
                             declared=("the factory's input_shape attribute",) if has else ())
    fields = _OVERRIDES.get(name)
    if fields:
        spec = dataclasses.replace(spec, **fields,
                                   declared=("--input-shape",) if "input_shape" in fields else spec.declared)
    return spec


def create_model(name: str) -> nn.Module:
    """A fresh (untrained) instance of model `name`; UserError if its factory returns no nn.Module.

    With an output selector, the instance's class becomes a subclass whose forward returns only the
    selected element: parameter names (the state dict) stay the user's, and tracers (FX, TorchScript,
    the ONNX exporter) see a forward that returns one tensor.
    """
    spec = model_spec(name)
    model = spec.factory()
    if not isinstance(model, nn.Module):
        raise UserError(f"model {name!r}: factory returned {type(model).__name__}, expected a torch.nn.Module")
    if spec.output is not None:
        model.__class__ = _selecting_class(type(model), spec.output)
    return model


_SELECTING: dict[tuple[type, int | str], type] = {}


def _selecting_class(cls: type, output: int | str) -> type:
    key = (cls, output)
    if key not in _SELECTING:
        # One named input, as the harness calls every model: FX reads the signature to make its
        # placeholders and cannot trace through *args.
        def forward(self, x):
            return select_output(cls.forward(self, x), output)
        _SELECTING[key] = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                                       "__qualname__": cls.__qualname__})
    return _SELECTING[key]


class OutputSelectorError(ValueError):
    """The output selector does not fit what the model returned."""


def select_output(out: Any, output: int | str) -> Any:
    """`out[output]` for a tuple/list/dict, else `getattr(out, output)`; a clear error otherwise."""
    if isinstance(out, (tuple, list)):
        if not isinstance(output, int) or not -len(out) <= output < len(out):
            raise OutputSelectorError(f"output selector {output!r}: the model returned a {type(out).__name__} of "
                             f"{len(out)} elements; give an index 0-{len(out) - 1}")
        return out[output]
    if isinstance(out, dict):
        if output not in out:
            raise OutputSelectorError(f"output selector {output!r}: the model returned a dict with keys {sorted(map(str, out))}")
        return out[output]
    if isinstance(output, str) and hasattr(out, output):
        return getattr(out, output)
    raise OutputSelectorError(f"output selector {output!r} does not fit the model's output ({type(out).__name__})")


def process_setup() -> dict[str, Any]:
    """What a worker process must repeat before it reads a cell: this process's import path, the
    user's modules it imported through specs, and the per-model overrides. Plain data (pickles, JSON)."""
    import sys
    return {"sys_path": list(sys.path), "plugins": plugin_modules(), "models": model_overrides()}


def apply_process_setup(setup: dict[str, Any] | None) -> None:
    """In a worker: load the registries, then extend the import path, import the user's modules and
    set the model overrides. A module that no longer imports is passed over here: the lookup that
    needs it (a model or technique spec) reports it as that cell's or model's error."""
    import sys
    load_registries()   # first: later path entries may hold a foreign `models` package (onnxruntime's)
    if not setup:
        return
    sys.path.extend(p for p in setup.get("sys_path", ()) if p not in sys.path)
    for module in setup.get("plugins", ()):
        try:
            import_plugin(module)
        except Exception:  # noqa: BLE001 - see the docstring
            pass
    configure_models(setup.get("models", {}))


def load_registries() -> None:
    """Import the built-in models and techniques now. Every process that runs cells calls this first:
    some libraries (onnxruntime) append folders holding their own `models` package to sys.path."""
    MODELS.load()
    TECHNIQUES.load()


def technique(name: str) -> type[Technique]:
    """The technique class registered as `name` (or a `package.module:Class` spec)."""
    return TECHNIQUES.get(name)
