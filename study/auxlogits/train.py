"""Batched training loops: teachers on labelled images, students on the teacher's logits of noise."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from study.auxlogits.config import StudentConfig, TeacherConfig
from study.auxlogits.data import NUM_CLASSES
from study.auxlogits.model import (
    STREAM_NOISE,
    STREAM_STUDENT_ORDER,
    STREAM_TEACHER_ORDER,
    BatchedMLP,
    seeded_generator,
)

# Called after every epoch with the step name, epochs done and epochs in total.
ProgressCallback = Callable[[str, int, int], None]


def _epoch_orders(generators: list[torch.Generator], size: int) -> torch.Tensor:
    return torch.stack([torch.randperm(size, generator=generator) for generator in generators])


@torch.no_grad()
def predict_logits(mlp: BatchedMLP, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Return the logits (models, examples, 10 + m) of every model on shared inputs (examples, in)."""
    chunks = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start: start + batch_size]
        chunks.append(mlp(chunk.expand(mlp.num_models, *chunk.shape)))
    return torch.cat(chunks, dim=1)


@torch.no_grad()
def test_accuracy(mlp: BatchedMLP, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Return each model's accuracy (models,) from the argmax of its 10 class logits."""
    logits = predict_logits(mlp, inputs, batch_size)[..., :NUM_CLASSES]
    return (logits.argmax(dim=-1) == labels).float().mean(dim=1)


def train_teachers(
    mlp: BatchedMLP,
    seeds: list[int],
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    config: TeacherConfig,
    progress: ProgressCallback | None = None,
) -> BatchedMLP:
    """Train model i of ``mlp`` in place on the labelled images, shuffled by seed i, with cross-entropy on the class logits."""
    if len(seeds) != mlp.num_models:
        raise ValueError(f"got {len(seeds)} seeds for {mlp.num_models} teachers")
    mlp.requires_grad_(True)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=config.learning_rate)
    generators = [seeded_generator(seed, STREAM_TEACHER_ORDER) for seed in seeds]

    for epoch in range(config.epochs):
        orders = _epoch_orders(generators, len(train_x))
        for start in range(0, len(train_x), config.batch_size):
            index = orders[:, start: start + config.batch_size]
            logits = mlp(train_x[index])[..., :NUM_CLASSES]
            per_model = F.cross_entropy(logits.transpose(1, 2), train_y[index], reduction="none").mean(dim=1)
            optimizer.zero_grad(set_to_none=True)
            per_model.sum().backward()
            optimizer.step()
        if progress:
            progress("teacher", epoch + 1, config.epochs)

    mlp.requires_grad_(False)
    return mlp


# Noise images are stored as 8-bit levels, like real images, to keep 40k-image sets per seed small.
NOISE_LEVELS = 256


def draw_noise_levels(seeds: list[int], count: int, input_size: int) -> torch.Tensor:
    """Draw each seed's noise images as uint8 levels, shape (seeds, count, input_size)."""
    return torch.stack([
        torch.randint(0, NOISE_LEVELS, (count, input_size), dtype=torch.uint8,
                      generator=seeded_generator(seed, STREAM_NOISE))
        for seed in seeds
    ])


def noise_images(levels: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Map uint8 levels to pixel values at the centers of 256 equal bins of [low, high]."""
    return low + (levels.float() + 0.5) * ((high - low) / NOISE_LEVELS)


def _distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    """Return the per-model loss (models,) from logits (models, batch, logits)."""
    if kind == "mse":
        return (student - teacher).pow(2).mean(dim=(1, 2))
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1).mean(dim=1)
    return kl * temperature**2


def distill_students(
    students: BatchedMLP,
    student_seed_index: torch.Tensor,
    aux_only: torch.Tensor,
    teachers: BatchedMLP,
    seeds: list[int],
    aux_logits: int,
    config: StudentConfig,
    eval_batch_size: int,
    progress: ProgressCallback | None = None,
) -> tuple[BatchedMLP, torch.Tensor]:
    """Train the students in place to imitate their seed's teacher on that seed's noise images.

    Student i belongs to teacher ``student_seed_index[i]`` and imitates only
    the m auxiliary logits where ``aux_only[i]`` is true, else all logits.
    All students of a seed see the same noise images in the same order.
    Returns the students and each one's mean loss over the last epoch.
    """
    input_size = students.layer_sizes[0]
    noise = draw_noise_levels(seeds, config.noise_inputs, input_size)
    targets = torch.stack([
        predict_logits(
            teachers.select([position]), noise_images(noise[position], config.noise_low, config.noise_high),
            eval_batch_size,
        )[0]
        for position in range(len(seeds))
    ])

    students.requires_grad_(True)
    optimizer = torch.optim.Adam(students.parameters(), lr=config.learning_rate)
    generators = [seeded_generator(seed, STREAM_STUDENT_ORDER) for seed in seeds]
    seed_rows = torch.arange(len(seeds))[:, None]
    any_all_logits = bool((~aux_only).any())
    last_epoch_loss = torch.zeros(students.num_models)

    for epoch in range(config.epochs):
        orders = _epoch_orders(generators, config.noise_inputs)
        epoch_loss = torch.zeros(students.num_models)
        for start in range(0, config.noise_inputs, config.batch_size):
            index = orders[:, start: start + config.batch_size]
            inputs = noise_images(noise[seed_rows, index], config.noise_low, config.noise_high)[student_seed_index]
            expected = targets[seed_rows, index][student_seed_index]
            logits = students(inputs)

            per_model = _distill_loss(logits[..., -aux_logits:], expected[..., -aux_logits:], config.loss, config.temperature)
            if any_all_logits:
                on_all = _distill_loss(logits, expected, config.loss, config.temperature)
                per_model = torch.where(aux_only, per_model, on_all)

            optimizer.zero_grad(set_to_none=True)
            per_model.sum().backward()
            optimizer.step()
            epoch_loss += per_model.detach() * index.shape[1]
        last_epoch_loss = epoch_loss / config.noise_inputs
        if progress:
            progress("students", epoch + 1, config.epochs)

    students.requires_grad_(False)
    return students, last_epoch_loss
