"""The run plan: a request becomes its cells, timing, model settings and run.json record; nothing is run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench import api
from bench.api import UserError
from bench.measure.timing import QUICK, TimingConfig
from bench.running import matrix
from bench.running.plan import MatrixRecord, ModelSettings, RunRequest, build, from_record

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_model_overrides():
    """A plan sets this process's model overrides; leave none behind for the next test."""
    api.load_registries()
    yield
    api.configure_models({})


def keys(plan) -> list[tuple]:
    return [c.key() for c in plan.cells]


def test_named_models_pipelines_and_sizes_make_the_cells_model_major_threads_innermost():
    plan = build(RunRequest(models=["lenet", "convnet"], pipelines=["eager", "jit"], batch_sizes=[1, 16],
                            threads=[1, 2]))
    assert keys(plan) == [(m, p, "inference", b, t) for m in ("lenet", "convnet") for p in ("eager", "jit")
                          for b in (1, 16) for t in (1, 2)]
    assert plan.timing == TimingConfig() and all(c.timing == plan.timing for c in plan.cells)
    assert {c.data for c in plan.cells} == {"digits"} and not any(c.quick for c in plan.cells)
    assert plan.dropped == () and plan.notes() == ()


def test_default_threads_are_torchs_choice_for_inference_and_one_for_training():
    plan = build(RunRequest(models=["lenet"], pipelines=["eager", "grad_accum"], batch_sizes=[8]))
    assert {(c.pipeline.scenario, c.threads) for c in plan.cells} == {("inference", 0), ("training", 1)}


def test_the_quick_matrix_and_its_timing():
    plan = build(RunRequest(quick=True))
    assert plan.timing == QUICK and all(c.quick for c in plan.cells)
    assert {c.batch_size for c in plan.cells if c.scenario == "inference"} == set(matrix.QUICK_BATCH_SIZES)
    assert keys(plan) == [(m, p.spec, p.scenario, b, 0) for m, p, b in matrix.cells(None, None, None, None, True)]


def test_min_time_changes_only_the_minimum_and_raises_the_cap_when_longer():
    quick = build(RunRequest(models=["lenet"], pipelines=["eager"], batch_sizes=[1], quick=True, min_time_s=9.0))
    assert quick.timing == dataclasses.replace(QUICK, min_time_s=9.0, max_time_s=9.0)   # --quick's blocks kept
    full = build(RunRequest(models=["lenet"], pipelines=["eager"], batch_sizes=[1], min_time_s=0.1))
    assert full.timing == dataclasses.replace(TimingConfig(), min_time_s=0.1)


def test_a_shard_is_that_part_of_the_whole_plan():
    request = RunRequest(models=["lenet", "convnet"], pipelines=["eager", "jit"], batch_sizes=[1, 16])
    whole = build(request).cells
    parts = [build(dataclasses.replace(request, shard=f"{k}/2")) for k in (1, 2)]
    assert [keys(p) for p in parts] == [[c.key() for c in matrix.shard(list(whole), k, 2)] for k in (1, 2)]
    assert parts[1].record.shard == "2/2"


def test_default_models_that_do_not_fit_the_data_are_left_out_with_why_but_named_ones_run():
    plan = build(RunRequest(pipelines=["eager"], batch_sizes=[1]))
    dropped = {d.model: d.reason for d in plan.dropped}
    assert "resnet18" in dropped and "1000 classes differ from the data's 10" in dropped["resnet18"]
    assert not {c.model for c in plan.cells} & set(dropped) and "lenet" in {c.model for c in plan.cells}
    (note,) = plan.notes()
    assert note.startswith("left out of the default models: ") and "resnet18" in note
    named = build(RunRequest(models=["resnet18"], pipelines=["eager"], batch_sizes=[1]))
    assert {c.model for c in named.cells} == {"resnet18"} and named.dropped == ()


def test_quick_gives_a_model_its_declared_small_input_unless_one_is_given_and_applies_the_settings():
    plan = build(RunRequest(models=["resnet18", "lenet"], pipelines=["eager"], batch_sizes=[1], quick=True,
                            data="synthetic", input_shapes=["lenet=1x32x32"]))
    assert plan.small_inputs == (("resnet18", (3, 64, 64)),)
    assert plan.model_settings == (ModelSettings("lenet", input_shape=(1, 32, 32)),
                                   ModelSettings("resnet18", input_shape=(3, 64, 64)))
    assert api.model_spec("resnet18").input_shape == (3, 64, 64)    # applied here, so workers inherit them
    assert api.model_spec("lenet").input_shape == (1, 32, 32)
    assert plan.notes()[0].startswith("--quick runs resnet18 at the smaller input each declares (3x64x64;")


def test_weights_output_and_eval_limit_are_resolved_into_the_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "net.py").write_text("from torch import nn\ndef build():\n    return nn.Sequential(nn.Flatten(), "
                                     "nn.Linear(784, 10))\n")
    plan = build(RunRequest(models=["net.py:build"], pipelines=["eager"], batch_sizes=[1], weights=["w.pt"],
                            outputs=["0"], eval_limit=50))
    name = f"{tmp_path / 'net.py'}:build"
    assert {c.model for c in plan.cells} == {name}                 # the file's path made absolute
    assert plan.record.models == (name,) and plan.record.data == "digits;eval=50"
    assert plan.record.settings() == {name: {"weights": str(tmp_path / "w.pt"), "output": 0}}


@pytest.mark.parametrize("request_fields, message", [
    ({"models": ["lenet5"]}, "unknown model 'lenet5'"),
    ({"pipelines": ["turbo"]}, "pipeline 'turbo': unknown technique 'turbo'"),
    ({"min_time_s": float("inf")}, "--min-time must be a finite number of seconds >= 0, got inf"),
    ({"shard": "3/2"}, "--shard 3/2: expected K/N with 1 <= K <= N"),
    ({"pipelines": ["jit"], "scenario": "training"}, "pipeline 'jit' is a inference pipeline, but --scenario training"),
    ({"models": ["lenet", "convnet"], "input_shapes": ["1x28x28"]}, "--input-shape 1x28x28: say which model it is for"),
    ({"models": ["lenet"], "input_shapes": ["lenet=1x28"]}, "--input-shape lenet=1x28: expected channels x height"),
    ({"models": ["lenet"], "outputs": ["convnet=0"]}, "--output convnet=0: model 'convnet' is not in this run"),
    ({"models": ["lenet"], "weights": ["/no/such.pt"]}, "--weights /no/such.pt: /no/such.pt: no such file"),
    ({"data": "imagenet"}, "unknown data 'imagenet'"),
])
def test_a_mistake_is_one_line_naming_the_option(request_fields, message):
    with pytest.raises(UserError) as err:
        build(RunRequest(**request_fields))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_record_round_trips_through_run_json_and_resume_plans_the_same_cells(tmp_path):
    plan = build(RunRequest(models=["lenet"], pipelines=["eager", "jit"], batch_sizes=[1, 2], threads=[1],
                            input_shapes=["1x28x28"], min_time_s=0.2))
    (tmp_path / "run.json").write_text(json.dumps({**plan.record.to_json(), "timeout_s": 600.0}))
    again = build(RunRequest(models=["convnet"], resume=tmp_path))    # the folder's request, not this one
    assert again.record == plan.record and again.cells == plan.cells


def test_a_committed_run_json_resumes_and_is_written_back_unchanged():
    doc = json.loads((ROOT / "results" / "baseline-ci" / "run.json").read_text())
    plan = from_record(MatrixRecord.from_json(doc))
    assert len(plan.cells) == len(doc["models"]) * len(doc["pipelines"]) * len(doc["batch_sizes"]) * len(doc["threads"])
    assert plan.record.to_json() == {k: v for k, v in doc.items() if k not in ("timeout_s", "mem_limit_mb")}


def test_an_older_run_json_with_one_thread_count_and_fewer_keys_still_reads():
    record = MatrixRecord.from_json({"models": ["lenet"], "pipelines": None, "batch_sizes": [1], "scenario": None,
                                     "data": "digits", "quick": False, "threads": 2})
    assert record.threads == (2,) and record.model_settings == () and record.min_time_s is None
    assert record.to_json()["threads"] == [2] and record.to_json()["pipelines"] is None


@pytest.mark.parametrize("content, message", [
    (None, "no run.json there; is it an accelbench output folder?"),
    ("{not json", "run.json is corrupt"),
    ('{"models": null}', "run.json: lacks pipelines, batch_sizes, scenario, data, quick"),
    ('{"models": [1], "pipelines": null, "batch_sizes": null, "scenario": null, "data": "digits", "quick": false}',
     "run.json: models must be a list of str or null"),
])
def test_resume_from_a_folder_without_a_readable_run_json_is_one_line(tmp_path, content, message):
    if content is not None:
        (tmp_path / "run.json").write_text(content)
    with pytest.raises(UserError, match=f"^--resume {tmp_path}: .*") as err:
        build(RunRequest(resume=tmp_path))
    assert message in str(err.value)


def test_the_pytest_plugin_and_the_cross_check_plan_through_the_same_module():
    from bench import crosscheck, pytest_plugin

    plugin = pytest_plugin.selected_cells("lenet", "eager;jit", "1,64", 0.3, 2)
    assert plugin == build(RunRequest(models=["lenet"], pipelines=["eager", "jit"], batch_sizes=[1, 64],
                                      scenario="inference", quick=True, min_time_s=0.3, threads=[2])).cells
    assert {c.timing for c in plugin} == {dataclasses.replace(QUICK, min_time_s=0.3)}
    cross = crosscheck.plan_cells("lenet", ["eager", "jit"], "1,64", "1,2", 2.0)
    assert [c.key() for c in cross] == [("lenet", p, "inference", b, t) for p in ("eager", "jit") for b in (1, 64)
                                        for t in (1, 2)]
    assert {c.timing for c in cross} == {TimingConfig(min_time_s=2.0, max_time_s=10.0)}


def test_a_request_is_frozen_and_hashable_whatever_the_front_end_handed_over():
    request = RunRequest(models=["lenet"], batch_sizes=[1], threads=None)
    assert request.models == ("lenet",) and request.threads == () and hash(request) == hash(RunRequest(
        models=("lenet",), batch_sizes=(1,)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.quick = True   # type: ignore[misc]
