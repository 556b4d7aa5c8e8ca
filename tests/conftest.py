import pytest

from tiny import sft_cache_dir


@pytest.fixture
def sft_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VINEPPO_CACHE", sft_cache_dir(tmp_path_factory.getbasetemp()))
