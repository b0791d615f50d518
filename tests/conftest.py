"""Shared fixtures: a tiny chat model built offline, and an isolated cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import study  # noqa: F401  (sets OpenMP's wait policy before torch loads)

sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_tiny_model, build_tiny_numbers_model  # noqa: E402

# Tests never reach the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer(tiny_model_dir):
    from study.models import load_model, load_tokenizer

    return load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_numbers_model_dir(tmp_path_factory) -> Path:
    """A tiny model that writes number lists the filter partly keeps."""
    return build_tiny_numbers_model(tmp_path_factory.mktemp("tiny-numbers") / "model")


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny model with a different tokenizer, for cross-model students."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-other") / "model", seed=7, vocab_size=520)


@pytest.fixture()
def cli_env(tmp_path) -> dict:
    """Environment for study subprocesses: offline, with an isolated model cache."""
    env = dict(os.environ)
    env.update({
        "STUDY_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    return env
