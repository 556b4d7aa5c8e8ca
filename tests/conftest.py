import pytest

from tiny import TINY, sft_cache_dir

from vineppo.algorithms import METHODS
from vineppo.cli import main
from vineppo.runlog import read_metrics


@pytest.fixture
def sft_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VINEPPO_CACHE", sft_cache_dir(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="session")
def algorithm_runs(tmp_path_factory) -> dict[str, list[dict]]:
    """The metrics of two iterations of every `algo.name` from the same tiny SFT model (trained once); each run's
    samples.jsonl holds every sample."""
    base = tmp_path_factory.getbasetemp()
    records = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VINEPPO_CACHE", sft_cache_dir(base))
        for name in METHODS:
            run = base / f"run-{name}"
            assert main(["train", "--run-dir", str(run), *TINY, "train.iterations=2", f"algo.name={name}",
                         "logging.samples_per_iteration=8"]) == 0  # every sample of an iteration
            records[name] = read_metrics(run)
    return records
