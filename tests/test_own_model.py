"""Bring your own model: the contract checked in isolation, trained weights from files, an honest checkpoint cache."""

from __future__ import annotations

import csv
import sys
import textwrap

import pytest
import torch

from bench import api
from bench import data as data_mod
from bench.api import UserError, registry
from bench.cli import main
from bench.running.modelcheck import check_contract
from bench.training import cache

FAST = ["--min-time", "0.05", "--no-report", "--batch-size", "1"]

NETS = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn
    from bench.api import register_model


    class TwoHeads(nn.Module):
        """Returns (logits, features), as many real networks do."""
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 28 * 28, 10)

        def forward(self, x):
            f = F.relu(self.bn(self.conv(x))).flatten(1)
            return self.fc(f), f


    class FailsInTraining(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(28 * 28, 10)

        def forward(self, x):
            if self.training:
                raise RuntimeError("this model cannot train")
            return self.fc(x.flatten(1))


    def two_heads():
        return TwoHeads()


    def fails_in_training():
        return FailsInTraining()


    def wants_64():
        """3x64x64 without declaring it."""
        return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Flatten(), nn.Linear(4 * 31 * 31, 10))


    @register_model("user_student", input_shape=(1, 28, 28))
    def user_student():
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


    def teacher():
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.ReLU(), nn.Linear(32, 10))
''')


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "mynets.py"
    path.write_text(NETS)
    yield str(path)
    api.configure_models({})
    api.MODELS.unregister("user_student")
    # this test's module must not be re-imported by the workers of later tests (it registers user_student)
    registry._PLUGINS[:] = [m for m in registry._PLUGINS if str(tmp_path) not in m]


def _rows(out) -> list[dict]:
    with open(out / "records.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tuple_output_needs_a_selector_and_then_works_through_fx(nets, digits):
    name = f"{nets}:two_heads"
    with pytest.raises(UserError, match=r"returns a tuple of 2 elements; name the element .* --output"):
        check_contract(name, digits)
    api.configure_models({name: {"output": 0}})
    check_contract(name, digits)
    model = api.create_model(name).eval()
    assert list(model.state_dict())[0] == "conv.weight"          # the user's parameter names are kept
    out = model(digits.test_x[:3])
    assert isinstance(out, torch.Tensor) and out.shape == (3, 10)
    traced = torch.fx.symbolic_trace(model)                       # fusion and static int8 trace with FX
    assert torch.equal(traced(digits.test_x[:3]), out)
    api.configure_models({name: {"output": 5}})
    with pytest.raises(UserError, match="give an index 0-1"):
        check_contract(name, digits)


def test_an_undeclared_input_shape_is_named_with_how_to_declare_it(nets, digits):
    name = f"{nets}:wants_64"
    with pytest.raises(UserError, match=r"input shape 1x28x28 \(the default; the data's images are 1x8x8: declare "
                                        r"the real one with --input-shape .*:wants_64=1x8x8"):
        check_contract(name, digits)
    api.configure_models({name: {"input_shape": (3, 64, 64)}})
    check_contract(name, data_mod.load("digits", (3, 64, 64)))


def test_a_class_count_that_disagrees_with_the_data_is_refused(nets, tmp_path):
    import numpy as np
    np.savez(tmp_path / "four.npz", x_train=np.random.rand(40, 1, 28, 28), y_train=np.arange(40) % 4,
             x_test=np.random.rand(8, 1, 28, 28), y_test=np.arange(8) % 4)
    with pytest.raises(UserError, match="outputs 10 classes but data npz has 4"):
        check_contract(f"{nets}:teacher", data_mod.load(f"npz:{tmp_path}/four.npz"))


def test_weights_from_a_state_dict_and_a_safetensors_file(digits, tmp_path):
    from safetensors.torch import save_file
    trained = cache.trained("lenet", digits)
    torch.save(trained.state_dict(), tmp_path / "lenet.pt")
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "lenet.safetensors"))
    x = digits.test_x[:16]
    try:
        for file in ("lenet.pt", "lenet.safetensors"):
            api.configure_models({"lenet": {"weights": str(tmp_path / file)}})
            loaded = cache.trained("lenet", digits, log=lambda m: pytest.fail(f"trained instead of loading: {m}"))
            assert torch.equal(loaded(x), trained(x))
            source = cache.weights_source("lenet", digits)
            assert source.startswith(f"file {tmp_path / file} sha256 ") and cache.file_sha256(tmp_path / file)[:16] in source
        state = trained.state_dict()
        state["extra.weight"] = state.pop("fc2.weight")
        state["conv1.bias"] = torch.zeros(3)
        torch.save(state, tmp_path / "bad.pt")
        api.configure_models({"lenet": {"weights": str(tmp_path / "bad.pt")}})
        with pytest.raises(UserError, match=r"does not fit the model's state dict; missing keys: fc2.weight; unexpected keys: extra.weight; "
                                              r"shape mismatches: conv1.bias \(3,\) vs model \(20,\)"):
            cache.trained("lenet", digits)
        torch.save(trained, tmp_path / "whole_model.pt")               # a pickled module, not a state dict
        api.configure_models({"lenet": {"weights": str(tmp_path / "whole_model.pt")}})
        with pytest.raises(UserError, match="cannot read it as a state dict"):
            cache.trained("lenet", digits)
    finally:
        api.configure_models({})


def test_an_edited_forward_retrains_and_the_log_says_why(tmp_path, digits, monkeypatch):
    src = textwrap.dedent('''
        import torch.nn.functional as F
        from torch import nn
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1, self.fc2 = nn.Linear(784, 16), nn.Linear(16, 10)
            def forward(self, x):
                return self.fc2(F.relu(self.fc1(x.flatten(1))))
        def net():
            return Net()
    ''')
    path = tmp_path / "edited.py"
    path.write_text(src)
    name = f"{path}:net"
    first = cache.checkpoint_path(name, api.create_model(name), digits, cache.default_config(name))
    path.write_text(src.replace("F.relu", "torch.tanh").replace("import torch.nn.functional as F",
                                                                   "import torch\nimport torch.nn.functional as F"))
    for mod in [m for m in sys.modules if m.startswith("accelbench_user_") and m.endswith("_edited")]:
        del sys.modules[mod]
    second = cache.checkpoint_path(name, api.create_model(name), digits, cache.default_config(name))
    assert first != second                                 # same shapes, different code: another checkpoint
    cache._remember(name, digits, cache._components(name, api.create_model(name), digits, cache.default_config(name)))
    path.write_text(src.replace("F.relu", "F.gelu"))
    for mod in [m for m in sys.modules if m.startswith("accelbench_user_") and m.endswith("_edited")]:
        del sys.modules[mod]
    parts = cache._components(name, api.create_model(name), digits, cache.default_config(name))
    assert cache._why_retrain(name, digits, parts) == "model code changed since the last checkpoint"


def test_a_model_failing_in_training_costs_only_its_rows(nets, tmp_path, capsys):
    cache.trained("lenet", data_mod.load("digits"))   # cached, so only the user's model trains in the run
    out = tmp_path / "run"
    code = main(["run", "--model", "lenet", "--model", f"{nets}:fails_in_training", "--model", f"{nets}:wants_64",
                 "--pipeline", "eager", "--pipeline", "jit", "--out", str(out), *FAST])
    assert code == 1
    rows = {(r["model"].rsplit(":", 1)[-1], r["pipeline"]): r for r in _rows(out)}
    assert len(rows) == 6
    for pipe in ("eager", "jit"):
        assert rows[("lenet", pipe)]["status"] == "ok"
        assert rows[("lenet", pipe)]["weights"].startswith("trained here on digits")
        bad = rows[("fails_in_training", pipe)]
        assert bad["status"] == "error" and "RuntimeError: this model cannot train" in bad["reason"]
        wide = rows[("wants_64", pipe)]
        assert wide["status"] == "error" and "--input-shape" in wide["reason"]
    assert "this model cannot train" in (out / "errors.log").read_text()   # the traceback, off the table
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_distill_to_a_student_that_the_users_module_registers(nets, tmp_path):
    out = tmp_path / "run"
    code = main(["run", "--model", f"{nets}:teacher", "--pipeline", "distill:student=user_student,epochs=1",
                 "--out", str(out), *FAST])
    (row,) = _rows(out)
    assert code == 0 and row["status"] == "ok", row["reason"]
    assert 0 < float(row["accuracy"]) <= 1


def test_a_helper_function_edited_in_the_models_file_changes_its_identity(tmp_path, digits):
    src = ("import torch\nfrom torch import nn\n"
           "def act(x):\n    return torch.relu(x)\n"
           "class Net(nn.Module):\n"
           "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(784, 10)\n"
           "    def forward(self, x):\n        return self.fc(act(x.flatten(1)))\n"
           "def net():\n    return Net()\n")
    path = tmp_path / "helper.py"
    path.write_text(src)
    name = f"{path}:net"
    before = cache.model_code_digest(name, api.create_model(name))
    path.write_text(src.replace("torch.relu", "torch.sigmoid"))
    for mod in [m for m in sys.modules if m.startswith("accelbench_user_") and m.endswith("_helper")]:
        del sys.modules[mod]
    assert cache.model_code_digest(name, api.create_model(name)) != before


def test_a_model_file_imports_its_neighbour_and_resume_works_from_another_folder(tmp_path, monkeypatch):
    (tmp_path / "blocks.py").write_text("from torch import nn\ndef head():\n    return nn.Linear(784, 10)\n")
    (tmp_path / "net.py").write_text("from torch import nn\nimport blocks\n"
                                     "def build():\n    return nn.Sequential(nn.Flatten(), blocks.head())\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--model", "net.py:build", "--pipeline", "eager", "--out", str(out), *FAST]) == 0
    (row,) = _rows(out)
    assert row["status"] == "ok" and row["model"] == f"{tmp_path / 'net.py'}:build"
    monkeypatch.chdir(tmp_path.parent)
    assert main(["run", "--resume", str(out), "--no-report"]) == 0


def test_contract_messages_for_a_wrong_selector_and_a_features_output(nets, digits):
    name = f"{nets}:two_heads"
    api.configure_models({name: {"output": 3}})
    with pytest.raises(UserError, match=r"--output 3 does not fit: output selector 3: .* give an index 0-1"):
        check_contract(name, digits)
    api.configure_models({name: {"output": 1}})
    with pytest.raises(UserError, match=r"outputs 3136 classes .* \(or is element 1 of the output, chosen with --output"):
        check_contract(name, digits)


def test_weights_option_needs_a_model_when_several_run(tmp_path, capsys):
    (tmp_path / "w.pt").write_bytes(b"")
    code = main(["run", "--model", "lenet", "--model", "convnet", "--weights", str(tmp_path / "w.pt"),
                 "--out", str(tmp_path / "o"), *FAST])
    assert code == 2
    assert "say which model it is for" in capsys.readouterr().err


def test_the_contract_check_holds_with_a_single_test_image():
    """--eval-limit 1 leaves one test image; the check still feeds a batch of several (a model is not
    blamed for returning one row for one image)."""
    from bench.api import load_registries
    from bench.data import load
    from bench.running.modelcheck import check_contract
    load_registries()
    data = load("digits;eval=1", (1, 28, 28))
    assert len(data.test_x) == 1
    check_contract("lenet", data)   # raised "forward of 2 images returns shape (1, 10)" before
