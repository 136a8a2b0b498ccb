"""Shared fixtures: one prepared builtin corpus per test session and a CPU-sized train.py.

The cache lives in a temp folder unless POPSEARCH_CACHE is set (CI sets it)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# A ~100k-parameter model that trains a few steps a second on one CPU core.
TINY_OVERRIDES = {
    "DEPTH": 2,
    "MODEL_DIM": 64,
    "N_HEADS": 2,
    "SEQ_LEN": 64,
    "DEVICE_BATCH_SIZE": 8,
    "TOTAL_BATCH_SIZE": 512,
    "SHORT_WINDOW": 32,
    "COMPILE": False,
}


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    root = os.environ.get("POPSEARCH_CACHE")
    if root:
        return Path(root)
    path = tmp_path_factory.mktemp("popsearch-cache")
    os.environ["POPSEARCH_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def data_config(cache_root):
    from judge.spec import DataConfig
    return DataConfig(corpus="builtin", vocab_size=512, cache_dir=str(cache_root))


@pytest.fixture(scope="session")
def data_spec(data_config):
    from judge.prepare import prepare
    return prepare(data_config, log=lambda *a, **k: None)


@pytest.fixture(scope="session")
def tiny_overrides() -> dict:
    return dict(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def baseline_source() -> str:
    return (REPO / "trainer" / "train.py").read_text()


@pytest.fixture(scope="session")
def tiny_source(baseline_source, tiny_overrides) -> str:
    from trainer.constants import apply_overrides
    return apply_overrides(baseline_source, tiny_overrides)


@pytest.fixture
def tiny_train_py(tmp_path, tiny_source) -> Path:
    path = tmp_path / "train.py"
    path.write_text(tiny_source)
    return path
