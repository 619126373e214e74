"""Training a model that has no weights: a recipe the user chooses (--train-*), kept in the checkpoint
key, saved after every epoch so an interruption continues where it stopped, and a warning when the
result is near chance. Also what a user's model meets around it: DataParallel state dicts, the
input-shape hint, --resume of a --no-history run, and the pytest plugin's data and input options."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import api
from bench import data as data_mod
from bench.api import UserError, registry
from bench.cli import main
from bench.running.modelcheck import check_contract
from bench.running.plan import MatrixRecord, RunRequest, build
from bench.training import cache, loop

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--min-time", "0.05", "--no-report", "--batch-size", "1", "--pipeline", "eager"]

NETS = textwrap.dedent('''
    import torch
    from torch import nn


    class Prior(nn.Module):
        """Ignores its input: the best it can learn is the commonest class (near chance on digits)."""
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(10))

        def forward(self, x):
            return self.bias.expand(x.shape[0], 10) + 0 * x.flatten(1)[:, :1]


    def prior():
        return Prior()


    def tiny():
        """No declared input shape; takes any 1-channel image."""
        return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16, 10))


    def grey_64():
        """Needs 1x64x64 and does not say so."""
        return nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.Flatten(), nn.Linear(2 * 31 * 31, 2))
''')


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "recipe_nets.py"
    path.write_text(NETS)
    yield str(path)
    api.configure_models({})
    registry._PLUGINS[:] = [m for m in registry._PLUGINS if str(tmp_path) not in m]


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# --- the recipe ------------------------------------------------------------------------------------

def test_train_options_become_each_models_recipe_and_run_json_keeps_them(tmp_path):
    try:
        plan = build(RunRequest(models=["lenet", "convnet"], train_epochs=3, train_lr=0.01, train_schedule="step"))
        assert loop.default_config("lenet") == loop.TrainConfig(epochs=3, lr=0.01, schedule="step")
        # the option replaces only what it names: convnet keeps its registered batch size
        assert loop.default_config("convnet") == loop.TrainConfig(epochs=3, lr=0.01, schedule="step", batch_size=32)
        doc = plan.record.to_json()
        assert doc["train"] == {"epochs": 3, "lr": 0.01, "schedule": "step"}
        assert MatrixRecord.from_json(doc) == plan.record                      # what --resume plans again
        build(RunRequest(models=["convnet"]))
        assert loop.default_config("convnet").epochs == 40                     # registered default without options
        assert "train" not in build(RunRequest(models=["lenet"])).record.to_json()
    finally:
        api.configure_models({})


@pytest.mark.parametrize("argv, message", [
    (["--train-epochs", "0"], "--train-epochs: must be >= 1, got 0"),
    (["--train-lr", "-1"], "--train-lr: must be a number > 0, got -1"),
    (["--train-schedule", "linear"], "--train-schedule: invalid choice: 'linear'"),
])
def test_a_bad_train_option_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main(["run", "--model", "lenet", "--out", str(tmp_path / "o"), *FAST, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_the_recipe_is_part_of_the_checkpoint_key(digits):
    model = loop.init_model("lenet", 0)
    base = loop.TrainConfig(epochs=2)
    paths = {cache.checkpoint_path("lenet", model, digits, cfg) for cfg in
             (base, loop.TrainConfig(epochs=3), loop.TrainConfig(epochs=2, lr=1e-3),
              loop.TrainConfig(epochs=2, schedule="step"), loop.TrainConfig(epochs=2, schedule="constant"))}
    assert len(paths) == 5
    # checkpoints trained before the schedule could be chosen (all cosine) keep their key
    assert "schedule" not in base.key() and loop.TrainConfig(schedule="step").key()["schedule"] == "step"


def test_the_schedules_shape_the_learning_rate():
    def rates(schedule: str) -> list[float]:
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = loop.lr_scheduler(opt, loop.TrainConfig(epochs=8, lr=1.0, schedule=schedule))
        out = []
        for _ in range(8):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out
    assert rates("constant") == [1.0] * 8
    assert rates("step") == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    cosine = rates("cosine")
    assert cosine[0] == 1.0 and all(a > b for a, b in zip(cosine, cosine[1:])) and cosine[-1] < 0.05


# --- an interrupted training continues ------------------------------------------------------------

def test_an_interrupted_training_continues_from_its_last_epoch(digits, monkeypatch):
    cfg = loop.TrainConfig(epochs=2, seed=11)
    real_train = cache.train
    epochs_run: list[int] = []
    starts: list[int | None] = []

    def interrupted_after_epoch_1(model, data, cfg, **kw):
        on_epoch = kw["on_epoch"]

        def then_stop(state):
            epochs_run.append(state["epoch"])
            on_epoch(state)                     # the harness saves the state first ...
            if state["epoch"] == 1:
                raise KeyboardInterrupt         # ... then Ctrl-C lands
        return real_train(model, data, cfg, **{**kw, "on_epoch": then_stop})

    monkeypatch.setattr(cache, "train", interrupted_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        cache.trained("lenet", digits, cfg, log=lambda m: None)
    final = cache.checkpoint_path("lenet", loop.init_model("lenet", cfg.seed), digits, cfg)
    partial = cache.partial_path(final)
    assert not final.exists() and partial.exists()
    assert torch.load(partial, weights_only=True)["epoch"] == 1

    def counting(model, data, cfg, **kw):
        starts.append(kw["start"]["epoch"] if kw.get("start") else None)
        on_epoch = kw["on_epoch"]
        return real_train(model, data, cfg, **{**kw, "on_epoch": lambda s: (epochs_run.append(s["epoch"]), on_epoch(s))})

    monkeypatch.setattr(cache, "train", counting)
    logs: list[str] = []
    resumed = cache.trained("lenet", digits, cfg, log=logs.append)
    assert starts == [1] and epochs_run == [1, 2]            # epoch 1 was not trained again
    assert any("continuing from epoch 1/2" in m for m in logs), logs
    assert final.exists() and not partial.exists()
    whole = loop.init_model("lenet", cfg.seed)
    real_train(whole, digits, cfg, eval_every_epoch=False)
    assert _same(resumed, whole)                             # the same weights as a training never interrupted


def test_an_unreadable_saved_state_starts_over(digits):
    cfg = loop.TrainConfig(epochs=1, seed=12)
    final = cache.checkpoint_path("lenet", loop.init_model("lenet", cfg.seed), digits, cfg)
    partial = cache.partial_path(final)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"\x00" * 50)
    logs: list[str] = []
    cache.trained("lenet", digits, cfg, log=logs.append)
    assert any("unusable" in m and "training from the start" in m for m in logs), logs
    assert final.exists() and not partial.exists()


# --- near chance ----------------------------------------------------------------------------------

def test_near_chance_rule():
    assert cache.near_chance(0.12, 360, 10)              # chance itself
    assert cache.near_chance(0.20, 360, 10)              # twice chance, interval reaches below it
    assert cache.near_chance(0.22, 50, 10)               # few images: the interval is wide
    assert cache.near_chance(0.30, 360, 10) is None
    assert cache.near_chance(0.97, 360, 10) is None
    assert cache.near_chance(0.70, 100, 2)               # two classes: the bar is 75%, not twice chance
    assert cache.near_chance(0.90, 100, 2) is None
    assert "not clearly above 20%" in cache.near_chance(0.12, 360, 10)
    assert cache.near_chance(float("nan"), 360, 10) is None


def test_a_training_that_ends_near_chance_says_so(nets, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", "--model", f"{nets}:prior", "--train-epochs", "1", "--no-isolate", "--no-history",
                 "--out", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    (line,) = [m for m in err.splitlines() if "warning" in m]
    assert "near chance (10.0% for 10 classes)" in line and "after 1 epoch of training" in line
    assert f"--weights {nets}:prior=FILE" in line and "--train-epochs" in line


# --- --resume of a --no-history run ---------------------------------------------------------------

def test_resume_of_a_no_history_run_stays_out_of_the_history(tmp_path, monkeypatch):
    from bench.history import store
    monkeypatch.delenv("ACCELBENCH_HISTORY_DB", raising=False)
    out = tmp_path / "run"
    assert main(["run", "--model", "lenet", "--out", str(out), "--no-history", "--no-isolate", *FAST]) == 0
    default_db = Path(store.default_db(out))
    assert not default_db.exists()
    assert main(["run", "--resume", str(out), "--no-report", "--no-isolate"]) == 0
    assert main(["run", "--resume", str(out), "--no-report", "--no-isolate", "--db", str(tmp_path / "h.sqlite")]) == 0
    assert not default_db.exists() and not (tmp_path / "h.sqlite").exists()


# --- --weights from DataParallel ------------------------------------------------------------------

def test_a_data_parallel_state_dict_loads_with_its_prefix_stripped(digits, tmp_path, capfd):
    trained = cache.trained("lenet", digits, loop.TrainConfig(epochs=1))
    torch.save(torch.nn.DataParallel(trained).state_dict(), tmp_path / "dp.pt")
    assert all(k.startswith("module.") for k in torch.load(tmp_path / "dp.pt", weights_only=True))
    notes: list[str] = []
    model = api.create_model("lenet")
    cache.load_weights_file(model, tmp_path / "dp.pt", "lenet", log=notes.append)
    assert _same(model, trained)
    (note,) = notes
    assert "every key carried the 'module.' prefix of a DataParallel/DistributedDataParallel wrapper, stripped" in note
    state = torch.nn.DataParallel(api.create_model("convnet")).state_dict()
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"does not fit the model's state dict \(every key carried the 'module.' "
                                        r"prefix .* stripped\); shape mismatches: conv1.bias"):
        cache.load_weights_file(api.create_model("lenet"), tmp_path / "other.pt", "lenet")
    out = tmp_path / "o"
    assert main(["run", "--model", "lenet", "--weights", str(tmp_path / "dp.pt"), "--no-history",
                 "--out", str(out), *FAST]) == 0
    assert "prefix of a DataParallel/DistributedDataParallel wrapper, stripped; loaded" in capfd.readouterr().err


# --- the input-shape hint -------------------------------------------------------------------------

def _image_folder(root: Path, mode: str, size: int) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")
    return root


def test_the_missing_input_shape_hint_names_the_datas_images(nets, tmp_path, capsys):
    rgb = _image_folder(tmp_path / "rgb", "RGB", 64)
    code = main(["run", "--model", f"{nets}:tiny", "--data", f"imagefolder:{rgb}", "--out", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "images are 3x64x64" in err and "--input-shape MODEL=3x64x64" in err and "28" not in err.split("(input")[0]
    grey = data_mod.load(f"imagefolder:{_image_folder(tmp_path / 'grey', 'L', 64)}")   # read at the default 1x28x28
    assert grey.source_shape == (1, 64, 64) and grey.input_shape == (1, 28, 28)
    name = f"{nets}:grey_64"
    with pytest.raises(UserError, match=rf"input shape 1x28x28 \(the default; the data's images are 1x64x64: declare "
                                        rf"the real one with --input-shape {name}=1x64x64"):
        check_contract(name, grey)


# --- the pytest plugin ----------------------------------------------------------------------------

def test_the_pytest_plugin_takes_data_and_an_input_shape(nets, tmp_path):
    from bench import pytest_plugin
    np.savez(tmp_path / "d.npz", x_train=np.random.rand(40, 1, 12, 12), y_train=np.arange(40) % 10,
             x_test=np.random.rand(20, 1, 12, 12), y_test=np.arange(20) % 10)
    name = f"{nets}:tiny"
    try:
        (cell,) = pytest_plugin.selected_cells(name, "eager", "1", data=f"npz:{tmp_path / 'd.npz'}",
                                               input_shapes=("1x12x12",))
        assert cell.data == f"npz:{tmp_path / 'd.npz'}" and api.model_spec(name).input_shape == (1, 12, 12)
        with pytest.raises(UserError, match="--input-shape 12x12: expected channels x height x width"):
            pytest_plugin.selected_cells(name, "eager", "1", input_shapes=("12x12",))
    finally:
        api.configure_models({})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    got = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          str(ROOT / "tests" / "benchmarks"), "--accel-models", name, "--accel-pipelines", "eager",
                          "--accel-batch-sizes", "1", "--accel-data", f"npz:{tmp_path / 'd.npz'}",
                          "--accel-input-shape", f"{name}=1x12x12"], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=300)
    assert got.returncode == 0, got.stdout + got.stderr
    assert f"test_pipeline[{name}-eager-bs1]" in got.stdout


def test_the_command_line_offers_the_loops_schedules():
    from bench import cli
    assert cli.SCHEDULES == loop.SCHEDULES
