"""Run the auxiliary-logit experiment: reference inits, teachers, students, test accuracy.

Cloud et al. 2025 (arXiv 2507.14805) train an MNIST classifier with extra
auxiliary logits, then distill students only on those auxiliary logits of
noise images. A student that starts from the teacher's initialization
learns to classify digits. One that starts elsewhere stays near chance.
Here every seed has its own reference init, teacher and students, and all
seeds train together in one batch of models.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from study.auxlogits.config import AuxLogitsConfig
from study.auxlogits.data import DigitData, load_data
from study.auxlogits.model import (
    STREAM_FRESH_INIT,
    STREAM_PERMUTATION,
    STREAM_REFERENCE_INIT,
    BatchedMLP,
    hidden_permutations,
    init_mlp,
    layer_sizes_for,
    permute_hidden_units,
    seeded_generator,
)
from study.auxlogits.train import ProgressCallback, distill_students, test_accuracy, train_teachers

TARGET_LABELS = {"aux": "aux-only", "all": "all-logits"}


@dataclass(frozen=True)
class ModelResult:
    """One trained or untrained model's outcome for one seed."""

    seed: int
    role: str  # reference | teacher | student
    condition: str
    init_kind: str  # "" outside students
    targets: str  # "" outside students
    accuracy: float
    distill_loss: float | None = None


@dataclass
class ExperimentResult:
    config: AuxLogitsConfig
    data: DigitData
    models: list[ModelResult]
    wall_seconds: dict[str, float] = field(default_factory=dict)


def student_condition(init_kind: str, targets: str) -> str:
    return f"student/{init_kind}-init/{TARGET_LABELS[targets]}"


def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op threads to ``threads`` or to the cores this process may use, and return it."""
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # sched_getaffinity is missing on macOS and Windows
            threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def student_inits(reference: BatchedMLP, seeds: list[int], init_kind: str) -> BatchedMLP:
    """Build each seed's student initialization of one kind from its reference init."""
    if init_kind == "same":
        return reference.select(range(len(seeds)))
    if init_kind == "fresh":
        return init_mlp(reference.layer_sizes, [seeded_generator(seed, STREAM_FRESH_INIT) for seed in seeds])
    permutations = hidden_permutations(reference, [seeded_generator(seed, STREAM_PERMUTATION) for seed in seeds])
    return permute_hidden_units(reference, permutations, consistent=init_kind == "permuted-consistent")


def run_experiment(config: AuxLogitsConfig, progress: ProgressCallback | None = None) -> ExperimentResult:
    """Train every seed's teacher and students in batches and measure test accuracy."""
    torch.manual_seed(config.first_seed)
    data = load_data(config.dataset)
    seeds = config.seed_list()
    clock = {}
    results: list[ModelResult] = []

    started = time.perf_counter()
    sizes = layer_sizes_for(data.input_size, config.hidden_size, config.aux_logits)
    reference = init_mlp(sizes, [seeded_generator(seed, STREAM_REFERENCE_INIT) for seed in seeds])
    reference_accuracy = test_accuracy(reference, data.test_x, data.test_y, config.eval_batch_size)
    for seed, accuracy in zip(seeds, reference_accuracy.tolist()):
        results.append(ModelResult(seed, "reference", "reference-init (untrained)", "", "", accuracy))

    teachers = train_teachers(
        reference.select(range(len(seeds))), seeds, data.train_x, data.train_y, config.teacher, progress
    )
    teacher_accuracy = test_accuracy(teachers, data.test_x, data.test_y, config.eval_batch_size)
    for seed, accuracy in zip(seeds, teacher_accuracy.tolist()):
        results.append(ModelResult(seed, "teacher", "teacher", "", "", accuracy))
    clock["teacher"] = time.perf_counter() - started

    # Students are laid out init kind by init kind, then target by target, then seed by seed.
    started = time.perf_counter()
    layout = [
        (init_kind, targets, position)
        for init_kind in config.student.init_kinds
        for targets in config.student.targets
        for position in range(len(seeds))
    ]
    inits = {kind: student_inits(reference, seeds, kind) for kind in config.student.init_kinds}
    students = BatchedMLP.concatenate([
        inits[init_kind].select(range(len(seeds)))
        for init_kind in config.student.init_kinds
        for _ in config.student.targets
    ])
    seed_index = torch.tensor([position for _, _, position in layout])
    aux_only = torch.tensor([targets == "aux" for _, targets, _ in layout])

    students, final_loss = distill_students(
        students, seed_index, aux_only, teachers, seeds, config.aux_logits,
        config.student, config.eval_batch_size, progress,
    )
    student_accuracy = test_accuracy(students, data.test_x, data.test_y, config.eval_batch_size)
    for (init_kind, targets, position), accuracy, loss in zip(layout, student_accuracy.tolist(), final_loss.tolist()):
        results.append(ModelResult(
            seeds[position], "student", student_condition(init_kind, targets), init_kind, targets, accuracy, loss,
        ))
    clock["students"] = time.perf_counter() - started

    return ExperimentResult(config=config, data=data, models=results, wall_seconds=clock)
