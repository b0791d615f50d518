"""Tests of the auxiliary-logit experiment: the subliminal effect, batching, permutations, IDX files, CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from study.auxlogits.config import AuxLogitsConfig, StudentConfig, TeacherConfig
from study.auxlogits.data import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, load_data, load_mnist_idx, read_idx
from study.auxlogits.experiment import configure_threads, run_experiment
from study.auxlogits.model import (
    STREAM_PERMUTATION,
    STREAM_REFERENCE_INIT,
    BatchedMLP,
    hidden_permutations,
    init_mlp,
    layer_sizes_for,
    permute_hidden_units,
    seeded_generator,
)
from study.auxlogits.results import metric_rows, summarize, t_interval
from study.auxlogits.train import distill_students, predict_logits, train_teachers
from study.errors import StudyError
from study.schema import METRIC_COLUMNS

CHANCE = 0.1

# Small enough for about 20 s on one core; 8x8 inputs keep the first layer cheap.
EFFECT_CONFIG = {
    "seeds": 4,
    "dataset": {"image_side": 8},
    "teacher": {"epochs": 10},
    "student": {"epochs": 5, "noise_inputs": 40000, "init_kinds": ["same", "fresh"]},
}

TINY_CONFIG = {
    "seeds": 2,
    "hidden_size": 32,
    "dataset": {"image_side": 8},
    "teacher": {"epochs": 2},
    "student": {"epochs": 1, "noise_inputs": 512, "init_kinds": ["same", "permuted"], "targets": ["aux", "all"]},
}


@pytest.fixture(scope="module")
def effect_summary() -> pd.DataFrame:
    config = AuxLogitsConfig.model_validate(EFFECT_CONFIG)
    configure_threads(config.threads)
    result = run_experiment(config)
    return summarize(metric_rows(result, run_id="test")).set_index("condition")


def test_same_init_students_learn_task(effect_summary):
    same = effect_summary.loc["student/same-init/aux-only"]
    assert same["seeds"] == 4
    assert same["ci_low"] > CHANCE + 0.15, f"same-init students not clearly above chance: {same.to_dict()}"


def test_fresh_init_students_stay_near_chance(effect_summary):
    fresh = effect_summary.loc["student/fresh-init/aux-only"]
    assert fresh["ci_high"] < 0.25, f"fresh-init interval reaches too high: {fresh.to_dict()}"
    assert abs(fresh["mean"] - CHANCE) < 0.08, f"fresh-init mean far from chance: {fresh.to_dict()}"


def test_same_init_interval_above_fresh_init(effect_summary):
    same = effect_summary.loc["student/same-init/aux-only"]
    fresh = effect_summary.loc["student/fresh-init/aux-only"]
    assert same["ci_low"] > fresh["ci_high"]


def test_teacher_learns_digits(effect_summary):
    assert effect_summary.loc["teacher", "ci_low"] > 0.8


def _small_teachers(seeds: list[int], data) -> tuple[BatchedMLP, BatchedMLP]:
    sizes = layer_sizes_for(data.input_size, 32, 3)
    reference = init_mlp(sizes, [seeded_generator(seed, STREAM_REFERENCE_INIT) for seed in seeds])
    teachers = train_teachers(
        reference.select(range(len(seeds))), seeds, data.train_x, data.train_y,
        TeacherConfig(epochs=2, batch_size=64),
    )
    return reference, teachers


@pytest.fixture(scope="module")
def small_data():
    return load_data(AuxLogitsConfig.model_validate({"dataset": {"image_side": 8}}).dataset)


def test_batched_teachers_match_single_seed(small_data):
    _, batched = _small_teachers([0, 1, 2], small_data)
    _, alone = _small_teachers([1], small_data)
    for batched_weight, alone_weight in zip(batched.parameters(), alone.parameters()):
        torch.testing.assert_close(batched_weight[1], alone_weight[0], atol=1e-5, rtol=1e-4)


def test_batched_students_match_single_seed(small_data):
    config = StudentConfig(epochs=2, noise_inputs=600, batch_size=64, init_kinds=["same"], targets=["aux", "all"])

    def distill(seeds: list[int]) -> BatchedMLP:
        reference, teachers = _small_teachers(seeds, small_data)
        # One aux-only and one all-logits student per seed.
        students = BatchedMLP.concatenate([reference, reference])
        seed_index = torch.arange(len(seeds)).repeat(2)
        aux_only = torch.tensor([True] * len(seeds) + [False] * len(seeds))
        students, _ = distill_students(students, seed_index, aux_only, teachers, seeds, 3, config, 256)
        return students

    batched = distill([0, 1, 2])
    alone = distill([1])
    for batched_weight, alone_weight in zip(batched.parameters(), alone.parameters()):
        torch.testing.assert_close(batched_weight[1], alone_weight[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched_weight[4], alone_weight[1], atol=1e-5, rtol=1e-4)


def test_consistent_permutation_keeps_function(small_data):
    _, trained = _small_teachers([0, 1], small_data)
    permutations = hidden_permutations(trained, [seeded_generator(seed, STREAM_PERMUTATION) for seed in (0, 1)])
    relabelled = permute_hidden_units(trained, permutations, consistent=True)

    inputs = small_data.test_x[:100]
    torch.testing.assert_close(predict_logits(relabelled, inputs, 64), predict_logits(trained, inputs, 64))
    assert not torch.equal(relabelled.weights[0], trained.weights[0])


def test_permuted_init_differs_with_same_weights(small_data):
    reference, _ = _small_teachers([0, 1], small_data)
    permutations = hidden_permutations(reference, [seeded_generator(seed, STREAM_PERMUTATION) for seed in (0, 1)])
    permuted = permute_hidden_units(reference, permutations, consistent=False)

    for permuted_tensor, reference_tensor in zip(permuted.parameters(), reference.parameters()):
        torch.testing.assert_close(
            permuted_tensor.flatten(1).sort(dim=1).values, reference_tensor.flatten(1).sort(dim=1).values,
        )
    assert not torch.equal(permuted.weights[0], reference.weights[0])
    inputs = small_data.test_x[:100]
    difference = (predict_logits(permuted, inputs, 64) - predict_logits(reference, inputs, 64)).abs().max()
    assert difference > 1e-2


def _write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = magic.to_bytes(4, "big") + b"".join(size.to_bytes(4, "big") for size in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def _write_mnist(folder: Path, suffix: str = "") -> dict[str, np.ndarray]:
    generator = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": generator.integers(0, 256, (6, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(6) % 10,
        "t10k-images-idx3-ubyte": generator.integers(0, 256, (3, 28, 28)),
        "t10k-labels-idx1-ubyte": np.array([9, 0, 5]),
    }
    for name, array in arrays.items():
        magic = IDX_IMAGES_MAGIC if "images" in name else IDX_LABELS_MAGIC
        _write_idx(folder / (name + suffix), magic, array)
    return arrays


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_loader_round_trip(tmp_path, suffix):
    arrays = _write_mnist(tmp_path, suffix)
    data = load_mnist_idx(tmp_path)

    expected_train = arrays["train-images-idx3-ubyte"].reshape(6, 784) / 255.0
    np.testing.assert_allclose(data.train_x.numpy(), expected_train, rtol=1e-6)
    assert data.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.test_y.tolist() == [9, 0, 5]
    assert data.input_size == 784
    assert data.eval_set == "mnist-t10k"


def test_idx_loader_rejects_bad_magic(tmp_path):
    _write_mnist(tmp_path)
    # A labels file where an images file belongs has the wrong magic number.
    _write_idx(tmp_path / "train-images-idx3-ubyte", IDX_LABELS_MAGIC, np.arange(6))
    with pytest.raises(StudyError, match=r"invalid magic number 0x00000801.*expected 0x00000803"):
        load_mnist_idx(tmp_path)


def test_idx_reader_rejects_truncated_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    _write_idx(path, IDX_LABELS_MAGIC, np.arange(5))
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(StudyError, match="truncated"):
        read_idx(path, IDX_LABELS_MAGIC)


def test_idx_loader_names_missing_file(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(StudyError, match="t10k-labels-idx1-ubyte.*not found"):
        load_mnist_idx(tmp_path)


def test_t_interval_matches_textbook():
    low, high = t_interval(np.array([1.0, 2.0, 3.0]))
    # t(0.975, df=2) = 4.3027, standard error 1/sqrt(3).
    assert low == pytest.approx(2 - 4.3027 / 3**0.5, abs=1e-3)
    assert high == pytest.approx(2 + 4.3027 / 3**0.5, abs=1e-3)


def test_mnist_dataset_requires_path():
    with pytest.raises(ValueError, match="dataset.path is required"):
        AuxLogitsConfig.model_validate({"dataset": {"name": "mnist-idx"}})


def _study_command() -> list[str]:
    script = Path(sys.executable).with_name("study")
    return [str(script)] if script.exists() else [sys.executable, "-m", "study.cli"]


def _write_config(path: Path, values: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(values))
    return path


def test_cli_writes_metrics(tmp_path):
    config = _write_config(tmp_path / "tiny.yaml", TINY_CONFIG)
    run_dir = tmp_path / "run"
    completed = subprocess.run(
        [*_study_command(), "aux-logits", str(config), "--out", str(run_dir), "--seeds", "3"],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "student/same-init/aux-only" in completed.stdout

    metrics = pd.read_parquet(run_dir / "results" / "metrics.parquet")
    assert tuple(metrics.columns) == METRIC_COLUMNS
    assert set(metrics["arm"]) == {"aux-logits"}
    assert sorted(metrics["seed"].unique()) == [0, 1, 2]
    assert set(metrics["condition"]) == {
        "reference-init (untrained)", "teacher",
        "student/same-init/aux-only", "student/same-init/all-logits",
        "student/permuted-init/aux-only", "student/permuted-init/all-logits",
    }
    accuracy = metrics[metrics["metric"] == "test_accuracy"]
    assert len(accuracy) == 3 * 6
    assert set(accuracy.loc[accuracy["condition"] == "student/same-init/aux-only", "loss"]) == {"aux-kl"}

    manifest = json.loads((run_dir / "aux-logits" / "manifest.json").read_text())
    assert manifest["seeds"] == [0, 1, 2]
    assert len(manifest["data"]["sha256"]) == 64
    assert "torch" in manifest["package_versions"]
    assert (run_dir / "aux-logits" / "accuracy.png").stat().st_size > 0
    assert (run_dir / "aux-logits" / "accuracy.pdf").stat().st_size > 0


def test_cli_rejects_unknown_key(tmp_path):
    config = _write_config(tmp_path / "typo.yaml", {**TINY_CONFIG, "seed": 3})
    completed = subprocess.run(
        [*_study_command(), "aux-logits", str(config), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2
    assert "did you mean 'seeds'" in completed.stderr
