"""Optional Weights & Biases logging: a clear error without the package, the right calls with it."""

import sys
import threading
import types

import pytest

from tiny import TINY

from vineppo.cli import main

pytestmark = pytest.mark.usefixtures("sft_cache")


class FakeRun:
    def __init__(self, **kwargs):
        self.init_kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, metrics, step):
        self.logged.append((step, dict(metrics)))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []
    module = types.ModuleType("wandb")
    module.util = types.SimpleNamespace(generate_id=lambda: "abc123")
    module.init = lambda **kwargs: runs.append(FakeRun(**kwargs)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


def test_wandb_requested_but_not_installed(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    before = set(threading.enumerate())
    assert main(["train", "--run-dir", str(tmp_path / "run"), *TINY, "logging.wandb=true"]) == 2
    err = capsys.readouterr().err
    assert "logging.wandb is true but wandb is not installed: pip install wandb" in err and "Traceback" not in err
    # nothing left open: no TensorBoard writer thread outlives the failed run (it would write into a deleted dir)
    assert not [t for t in set(threading.enumerate()) - before if type(t).__name__ == "_AsyncWriterThread"]


@pytest.mark.slow
def test_metrics_go_to_wandb_and_a_resumed_run_keeps_its_id(tmp_path, fake_wandb):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "train.iterations=2", "logging.wandb=true",
                 "logging.wandb_project=tests"]) == 0
    (first,) = fake_wandb
    assert first.init_kwargs["project"] == "tests" and first.init_kwargs["id"] == "abc123"
    assert first.init_kwargs["config"]["algo"]["name"] == "vineppo"
    assert [step for step, _ in first.logged] == [0, 1, 2]
    assert "eval/accuracy" in first.logged[0][1] and "loss/kl" in first.logged[1][1]
    assert first.finished
    assert (run / "wandb_id").read_text().strip() == "abc123"

    assert main(["train", "--resume", str(run)]) == 0
    assert fake_wandb[1].init_kwargs["id"] == "abc123" and fake_wandb[1].init_kwargs["resume"] == "allow"
