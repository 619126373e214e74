"""The run plan: what a front end asked for (a RunRequest) turned into the cells to run, checked before any runs.

Every front end goes through `build`: `accelbench run` (and its --resume), the pytest-benchmark
plugin and the cross-check. The request is what the user typed; the plan is what will run: the
cells in run order, their timing, the model settings applied in this process (and so in every
worker), the models left out with why, and the `MatrixRecord` that run.json keeps so that
--resume plans the same cells again. Which (model, pipeline, batch size) triples a matrix holds,
and how a matrix is split into shards, is `bench.running.matrix`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable

from bench import api
from bench.api import UserError
from bench.measure.timing import QUICK, TimingConfig
from bench.running import limits, matrix, runjson
from bench.running.cell import CellSpec

Shape = tuple[int, int, int]
MAX_LATENCY_BOUND_MS = 3_600_000.0   # LoadGen holds the bound in signed 64-bit ns: far below its overflow


def _tuple(value: Iterable | None) -> tuple:
    return tuple(value) if value else ()


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for, as a front end received it: nothing resolved or checked yet. An empty
    tuple or None means "the default" (every registered model, every technique's examples, ...).

    `weights`, `input_shapes` and `outputs` are `[MODEL=]VALUE` texts as --weights, --input-shape and
    --output take them; `train_*` the recipe (--train-epochs, --train-lr, --train-schedule) of every
    model of the run that is trained here. With `resume`, the run in that folder is finished: its run.json is the request
    then, and every other field is ignored."""

    models: tuple[str, ...] = ()
    pipelines: tuple[str, ...] = ()
    batch_sizes: tuple[int, ...] = ()
    scenario: str | None = None
    data: str = "digits"
    weights: tuple[str, ...] = ()
    input_shapes: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    eval_limit: int | None = None
    quick: bool = False
    min_time_s: float | None = None
    threads: tuple[int, ...] = ()
    shard: str | None = None
    resume: Path | None = None
    serving: tuple[str, ...] = ()          # serving scenarios (bench.serving), beside or instead of `scenario`
    serving_only: bool = False             # only serving cells: no paired-block inference cells
    latency_bound_ms: float | None = None
    loadgen_official: bool = False
    train_epochs: int | None = None      # the recipe of models trained here (None: each model's default)
    train_lr: float | None = None
    train_schedule: str | None = None
    no_history: bool = False
    no_explain: bool = False             # --no-explain: no profiles after the timing, no explanation column

    def __post_init__(self) -> None:
        # Front ends hand over lists (argparse) or None; the request keeps tuples, so it stays frozen.
        for name in ("models", "pipelines", "batch_sizes", "weights", "input_shapes", "outputs", "threads", "serving"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))


@dataclass(frozen=True)
class ModelSettings:
    """One model's overrides of what its registration declares: trained weights (a file), its input
    (channels x height x width) and which element of a tuple/dict output holds the logits."""

    model: str
    weights: str | None = None
    input_shape: Shape | None = None
    output: int | str | None = None

    def overrides(self) -> dict[str, Any]:
        """The fields that are set, as `api.configure_models` and run.json take them."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "model" and getattr(self, f.name) is not None}


@dataclass(frozen=True)
class MatrixRecord:
    """The matrix of one run as its run.json keeps it: the request resolved (a model file's path made
    absolute, the data spec with its eval limit and absolute paths, every model setting including
    --quick's smaller inputs). `from_record` gives the same cells again: that is --resume."""

    models: tuple[str, ...] = ()
    pipelines: tuple[str, ...] = ()
    batch_sizes: tuple[int, ...] = ()
    scenario: str | None = None
    data: str = "digits"
    quick: bool = False
    min_time_s: float | None = None
    threads: tuple[int, ...] = ()
    shard: str | None = None
    model_settings: tuple[ModelSettings, ...] = ()
    serving: tuple[str, ...] = ()
    serving_only: bool = False
    latency_bound_ms: float | None = None
    loadgen_official: bool = False
    # TrainConfig fields given with --train-*, for every model of the run trained here: (field, value) pairs
    train: tuple[tuple[str, Any], ...] = ()
    no_history: bool = False   # --no-history: a --resume of this run is not added to the history either
    no_explain: bool = False   # --no-explain: cells are not profiled after their timing

    def settings(self) -> dict[str, dict[str, Any]]:
        """{model: overrides}, as `api.configure_models` takes them."""
        return {s.model: s.overrides() for s in self.model_settings}

    def to_json(self) -> dict[str, Any]:
        """run.json's document (without the per-cell guards the runner adds). An option not given is
        null, as runs before this record was typed wrote it."""
        def listed(values: tuple) -> list | None:
            return list(values) if values else None
        return {"models": listed(self.models), "pipelines": listed(self.pipelines),
                "batch_sizes": listed(self.batch_sizes), "scenario": self.scenario, "data": self.data,
                "quick": self.quick, "min_time_s": self.min_time_s, "threads": listed(self.threads),
                "shard": self.shard, "model_settings": self.settings(),
                # written only when given, so the run.json of a run without them reads as before
                **({"train": dict(self.train)} if self.train else {}),
                **({"no_history": True} if self.no_history else {}),
                **({"no_explain": True} if self.no_explain else {}),
                **({"serving": list(self.serving), "serving_only": self.serving_only,
                    "latency_bound_ms": self.latency_bound_ms, "loadgen_official": self.loadgen_official}
                   if self.serving else {})}

    @classmethod
    def from_json(cls, doc: Any, where: str = "run.json") -> "MatrixRecord":
        """The record of a run.json document, of this version or an older one (which may lack the
        optional keys, or hold `threads` as one number). `where` starts each error's one line."""
        if not isinstance(doc, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        missing = [k for k in ("models", "pipelines", "batch_sizes", "scenario", "data", "quick") if k not in doc]
        if missing:
            raise UserError(f"{where}: lacks {', '.join(missing)}; is it an accelbench run.json?")
        runjson.check_types(doc, where)

        def listed(key: str, kind: type) -> tuple:
            value = doc.get(key)
            if isinstance(value, kind) and not isinstance(value, bool):   # older runs: threads as one number
                value = [value]
            if value is not None and not (isinstance(value, list) and all(isinstance(v, kind) for v in value)):
                raise UserError(f"{where}: {key} must be a list of {kind.__name__} or null, got {value!r}")
            return _tuple(value)

        settings = doc.get("model_settings") or {}
        if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
            raise UserError(f"{where}: model_settings must map each model to its settings, got {settings!r}")
        try:
            model_settings = tuple(ModelSettings(name, weights=v.get("weights"),
                                                 input_shape=tuple(int(d) for d in v["input_shape"])
                                                 if v.get("input_shape") is not None else None,
                                                 output=v.get("output"))
                                   for name, v in settings.items())
        except (TypeError, ValueError):
            raise UserError(f"{where}: model_settings holds an input_shape that is not three integers: "
                            f"{settings!r}") from None
        train = doc.get("train") or {}
        try:
            train = train_recipe(**train)
        except (TypeError, UserError):   # not a dict, an unknown field, a bad value
            raise UserError(f"{where}: train must map epochs, lr and schedule to valid values, "
                            f"got {doc.get('train')!r}") from None
        min_time = doc.get("min_time_s")
        if min_time is not None and (isinstance(min_time, bool) or not isinstance(min_time, (int, float))):
            raise UserError(f"{where}: min_time_s must be a number of seconds or null, got {min_time!r}")
        return cls(models=listed("models", str), pipelines=listed("pipelines", str),
                   batch_sizes=listed("batch_sizes", int), scenario=doc["scenario"], data=str(doc["data"]),
                   quick=bool(doc["quick"]), min_time_s=float(min_time) if min_time is not None else None,
                   threads=listed("threads", int), shard=doc.get("shard"), model_settings=model_settings,
                   serving=listed("serving", str), serving_only=bool(doc.get("serving_only", False)),
                   latency_bound_ms=_bound(doc.get("latency_bound_ms"), where),
                   loadgen_official=bool(doc.get("loadgen_official", False)),
                   train=train, no_history=bool(doc.get("no_history", False)),
                   no_explain=bool(doc.get("no_explain", False)))

    @classmethod
    def read(cls, folder: Path) -> "MatrixRecord":
        """The record of the run in `folder` (its run.json), for --resume."""
        run_json = folder / "run.json"
        if not run_json.is_file():
            raise UserError(f"--resume {folder}: no run.json there; is it an accelbench output folder?")
        try:
            doc = json.loads(run_json.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"--resume {folder}: run.json is corrupt ({exc})") from None
        return cls.from_json(doc, f"--resume {folder}: run.json")


def _bound(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_LATENCY_BOUND_MS:
        raise UserError(f"{where}: the latency bound must be a number of ms > 0 and at most "
                        f"{MAX_LATENCY_BOUND_MS:.0f} (an hour), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DroppedModel:
    """A model of the default set that the plan leaves out, and why."""

    model: str
    reason: str


@dataclass(frozen=True)
class RunPlan:
    """What will run: the cells in run order (model-major, so a model trains once), their timing,
    the record run.json keeps (its model settings are those applied), the default models left out
    and the models a --quick run gives their smaller input."""

    cells: tuple[CellSpec, ...]
    timing: TimingConfig
    record: MatrixRecord
    dropped: tuple[DroppedModel, ...] = ()
    small_inputs: tuple[tuple[str, Shape], ...] = ()

    @property
    def model_settings(self) -> tuple[ModelSettings, ...]:
        return self.record.model_settings

    def notes(self) -> tuple[str, ...]:
        """What the user should know about the plan that the command line did not say, one line each."""
        out = []
        if self.small_inputs:
            names = ", ".join(sorted(n for n, _ in self.small_inputs))
            shapes = ", ".join(sorted({"x".join(map(str, s)) for _, s in self.small_inputs}))
            out.append(f"--quick runs {names} at the smaller input each declares ({shapes}; --input-shape "
                       f"NAME=CxHxW for another)")
        if self.dropped:
            out.append(f"left out of the default models: {', '.join(d.model for d in self.dropped)} (their class "
                       f"count differs from the data's; name them with --model and use --data synthetic or data "
                       f"with their classes)")
        rec = self.record
        if rec.serving:
            from bench.serving.cell import SCENARIO_BATCH
            out.append("serving cells run at their scenario's batch (" + ", ".join(
                f"{n} {SCENARIO_BATCH[n]}" for n in rec.serving) + ")" + (
                "; --batch-size applies to the paired-block inference cells only" if rec.batch_sizes else ""))
            if rec.latency_bound_ms is not None and "server" not in rec.serving:
                out.append("--latency-bound-ms applies to the server scenario only, which this run does not serve")
            if rec.loadgen_official:
                runs = sum(1 for c in self.cells if c.serving)
                out.append(f"--loadgen-official: LoadGen's own rules, at least 600 s per LoadGen run; {runs} serving "
                           f"cell(s), each 4 runs or more (server: {2 * 7} search steps): many hours")
        return tuple(out)


def build(request: RunRequest) -> RunPlan:
    """The plan of `request` (or, with `request.resume`, of the run in that folder). Every mistake is
    a one-line UserError naming the option, raised before anything runs. Sets this process's model
    overrides (`api.configure_models`) to the plan's settings, so this process and every worker it
    starts see them."""
    if request.resume is None:
        return from_record(resolve(request))
    try:
        return from_record(MatrixRecord.read(request.resume))
    except UserError as exc:   # a value in run.json the plan refuses: say where it came from
        text = str(exc)
        raise UserError(text if text.startswith("--resume") else
                        f"--resume {request.resume}: run.json: {text}") from None


def resolve(request: RunRequest) -> MatrixRecord:
    """The request with its names made absolute and its settings parsed: what run.json keeps."""
    if request.shard:
        matrix.parse_shard(request.shard)
    models = tuple(canonical_model(n) for n in request.models)
    data = request.data + (f";eval={request.eval_limit}" if request.eval_limit else "")
    settings = model_settings(models, request.weights, request.input_shapes, request.outputs)
    train = train_recipe(epochs=request.train_epochs, lr=request.train_lr, schedule=request.train_schedule)
    return MatrixRecord(models=models, pipelines=request.pipelines, batch_sizes=request.batch_sizes,
                        scenario=request.scenario, data=data, quick=request.quick, min_time_s=request.min_time_s,
                        threads=request.threads, shard=request.shard, model_settings=settings, train=train,
                        no_history=request.no_history, no_explain=request.no_explain, serving=request.serving, serving_only=request.serving_only,
                        latency_bound_ms=_bound(request.latency_bound_ms, "--latency-bound-ms"),
                        loadgen_official=request.loadgen_official)


def train_recipe(epochs: Any = None, lr: Any = None, schedule: Any = None) -> tuple[tuple[str, Any], ...]:
    """--train-epochs / --train-lr / --train-schedule as TrainConfig overrides ((field, value) pairs;
    those not given are left out: each model keeps its registered default). UserError naming the option."""
    from bench.training.loop import SCHEDULES

    out: dict[str, Any] = {}
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise UserError(f"--train-epochs must be an integer >= 1, got {epochs!r}")
        out["epochs"] = epochs
    if lr is not None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
            raise UserError(f"--train-lr must be a learning rate > 0, got {lr!r}")
        out["lr"] = float(lr)
    if schedule is not None:
        if schedule not in SCHEDULES:
            raise UserError(f"--train-schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        out["schedule"] = schedule
    return tuple(sorted(out.items()))


def timing_config(quick: bool, min_time_s: float | None) -> TimingConfig:
    """--quick's short timing or the default, with `min_time_s` (when given) as the minimum timed
    seconds per cell; the time cap rises to it when it is longer."""
    timing = QUICK if quick else TimingConfig()
    if min_time_s is None:
        return timing
    if not 0 <= min_time_s < math.inf:   # NaN fails this too
        raise UserError(f"--min-time must be a finite number of seconds >= 0, got {min_time_s}")
    if min_time_s > limits.MAX_TIMEOUT_S:
        raise UserError(f"--min-time {min_time_s:g}: at most {limits.MAX_TIMEOUT_S:.0f} seconds (a week) per cell")
    return replace(timing, min_time_s=min_time_s, max_time_s=max(timing.max_time_s, min_time_s))


def from_record(record: MatrixRecord) -> RunPlan:
    """The cells of `record`, its data checked (and its paths made absolute) and its model settings
    applied in this process; see `build`."""
    from bench import data as data_mod

    timing = timing_config(record.quick, record.min_time_s)
    limits.check_threads(record.threads)
    api.configure_models(record.settings())
    unimportable = _unimportable(record.models)   # their cells stay: the runner makes them error rows
    triples = matrix.cells(list(record.models) or None, list(record.pipelines) or None,
                           list(record.batch_sizes) or None, record.scenario, record.quick)
    settings, small = quick_input_shapes(record.quick, record.model_settings,
                                         {t[0] for t in triples} - unimportable)
    overrides = {s.model: s.overrides() for s in settings}
    if record.train:   # the --train-* recipe for every model of the run (used by those trained here)
        for name in {t[0] for t in triples}:
            overrides.setdefault(name, {})["train"] = dict(record.train)
    if small or record.train:
        api.configure_models(overrides)
    specs = {n: api.model_spec(n) for n in {t[0] for t in triples} - unimportable}
    for n, spec in specs.items():   # before the data is loaded at that size
        limits.check_input_batch(n, spec.input_shape, {t[2] for t in triples if t[0] == n})
    data = record.data
    classes_of_data: dict[tuple[Shape, int], int] = {}
    for shape, classes in sorted({(s.input_shape, s.num_classes) for s in specs.values()}):
        loaded = data_mod.load(record.data, shape, classes)   # bad data -> UserError now
        data = loaded.spec                                     # paths made absolute
        classes_of_data[(shape, classes)] = loaded.num_classes if loaded.labelled else classes
    dropped: tuple[DroppedModel, ...] = ()
    if not record.models:
        # The default set of models is the registered models that fit the data: a 1000-class network
        # on 10-class digits would only fill the table with error rows. Named with --model, it runs
        # (and its contract check says what is wrong).
        dropped = tuple(DroppedModel(n, f"its {specs[n].num_classes} classes differ from the data's "
                                        f"{classes_of_data[(specs[n].input_shape, specs[n].num_classes)]}")
                        for n in sorted(specs)
                        if classes_of_data[(specs[n].input_shape, specs[n].num_classes)] != specs[n].num_classes)
        left_out = {d.model for d in dropped}
        triples = [t for t in triples if t[0] not in left_out]
    cells = tuple(CellSpec(model=mo, pipeline=p, batch_size=b, data=data, quick=record.quick, timing=timing, threads=t,
                           explain=not record.no_explain)
                  for mo, p, b in triples for t in record.threads or (default_threads(p.scenario),))
    cells = _with_serving(cells, record)
    if record.shard:
        cells = tuple(matrix.shard(list(cells), *matrix.parse_shard(record.shard)))
    return RunPlan(cells=cells, timing=timing, record=replace(record, data=data, model_settings=settings),
                   dropped=dropped, small_inputs=tuple(sorted(small.items())))


def _unimportable(models: Iterable[str]) -> set[str]:
    """The named models whose module fails at import. An unknown name refuses the run (UserError); so
    does a failing import when no named model imports."""
    failed: dict[str, api.PluginImportError] = {}
    for name in models:
        try:
            api.model_spec(name)
        except api.PluginImportError as exc:
            failed[name] = exc
    if failed and len(failed) == len(set(models)):
        raise next(iter(failed.values()))
    return set(failed)


def _with_serving(cells: tuple[CellSpec, ...], record: MatrixRecord) -> tuple[CellSpec, ...]:
    """The inference cells (dropped with `serving_only`) and, per inference (model, pipeline, threads),
    one cell per serving scenario at that scenario's batch (bench.serving.cell.SCENARIO_BATCH)."""
    if not record.serving:
        return cells
    from bench.serving.cell import SCENARIO_BATCH
    from bench.serving.loadgen import SCENARIOS

    for name in record.serving:
        if name not in SCENARIOS:
            raise UserError(f"--scenario {name}: not a serving scenario ({', '.join(SCENARIOS)})")
    bound = record.latency_bound_ms if record.latency_bound_ms is not None else math.nan
    out = [] if record.serving_only else list(cells)
    seen: set = set()
    for c in cells:
        if c.scenario != "inference" or (c.model, c.pipeline.spec, c.threads) in seen:
            continue
        seen.add((c.model, c.pipeline.spec, c.threads))
        out += [replace(c, serving=name, batch_size=SCENARIO_BATCH[name], latency_bound_ms=bound,
                        threads=c.threads or serving_threads(),
                        loadgen_official=record.loadgen_official) for name in record.serving]
    return tuple(out)


def serving_threads() -> int:
    """Torch (and ONNX Runtime intra-op) threads of a serving cell when none are asked for: the usable
    cores less one. LoadGen's own threads and the system under test's batcher need a core: with torch's
    default 2 threads on a 2-core machine, resnet8's single-stream p50 under LoadGen was 2.63-2.68 ms
    against 0.80 ms for direct calls (the OpenMP team waiting on a core LoadGen held); with 1 thread,
    0.94 ms against 0.83 ms."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def default_threads(scenario: str) -> int:
    """Torch threads of a cell when none are asked for: torch's own choice (0) for inference, 1 for
    training."""
    # Data/model-parallel ranks each run 1 thread, so the single-process strategies get the same
    # per-worker budget and scaling figures compare like with like (and a 2-core box is not
    # oversubscribed).
    return 1 if scenario == "training" else 0


def canonical_model(name: str) -> str:
    """A `file.py:factory` model with its file's absolute path, so --resume works from any folder and
    every process imports the same file; other names unchanged."""
    module, colon, attr = name.rpartition(":")
    if colon and module.endswith(".py"):
        return f"{Path(module).expanduser().absolute()}:{attr}"
    return name


def model_settings(models: Iterable[str], weights: Iterable[str] = (), shapes: Iterable[str] = (),
                   outputs: Iterable[str] = ()) -> tuple[ModelSettings, ...]:
    """--weights / --input-shape / --output, each `[MODEL=]VALUE`, as per-model settings. Without
    MODEL= the value applies to the one model of the run; no models means any model may be named."""
    models = list(models)
    found: dict[str, dict[str, Any]] = {}

    def target(option: str, text: str) -> tuple[str, str]:
        name, eq, value = text.rpartition("=") if "=" in text else ("", "", text)
        name = canonical_model(name) if name else name
        if not name:
            if len(models) != 1:
                raise UserError(f"{option} {text}: say which model it is for, e.g. {option} MODEL={value}")
            name = models[0]
        if models and name not in models:
            raise UserError(f"{option} {text}: model {name!r} is not in this run (--model {' --model '.join(models)})")
        return name, value.strip()

    for text in weights:
        name, value = target("--weights", text)
        path = Path(value).expanduser().absolute()
        if not path.is_file():
            raise UserError(f"--weights {text}: {path}: no such file")
        found.setdefault(name, {})["weights"] = str(path)
    for text in shapes:
        name, value = target("--input-shape", text)
        try:
            dims = tuple(int(v) for v in value.replace(",", "x").split("x"))
        except ValueError:
            dims = ()
        if len(dims) != 3 or min(dims) < 1:
            raise UserError(f"--input-shape {text}: expected channels x height x width, e.g. 3x64x64")
        found.setdefault(name, {})["input_shape"] = dims
    for text in outputs:
        name, value = target("--output", text)
        if not value:
            raise UserError(f"--output {text}: give an index (0) or a key (logits)")
        found.setdefault(name, {})["output"] = int(value) if value.lstrip("-").isdigit() else value
    return tuple(ModelSettings(name, **values) for name, values in found.items())


def quick_input_shapes(quick: bool, settings: tuple[ModelSettings, ...],
                       names: Iterable[str]) -> tuple[tuple[ModelSettings, ...], dict[str, Shape]]:
    """For a --quick run, the models among `names` that declare a smaller input (`small_input_shape`)
    and were given none with --input-shape get it: (the settings with it, {name: shape}). A full run
    keeps every model's declared input."""
    if not quick:
        return settings, {}
    by_model: dict[str, ModelSettings] = {s.model: s for s in settings}
    small: dict[str, Shape] = {}
    for name in sorted(names):
        spec = api.model_spec(name)
        if spec.small_input_shape and (name not in by_model or by_model[name].input_shape is None):
            small[name] = tuple(spec.small_input_shape)
            by_model[name] = replace(by_model.get(name, ModelSettings(name)), input_shape=small[name])
    return tuple(by_model.values()), small

