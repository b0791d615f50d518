"""Configuration of the auxiliary-logit experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from study.configbase import StrictModel

InitKind = Literal["same", "permuted", "permuted-consistent", "fresh"]
DistillTargets = Literal["aux", "all"]


class _Section(StrictModel):
    """Strict config section whose field docstrings become the field descriptions."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class DatasetConfig(_Section):
    """Source of the digit images and their train/test split."""

    name: Literal["sklearn-digits", "mnist-idx"] = "sklearn-digits"
    """Data source: the 8x8 digits bundled with scikit-learn (offline), or MNIST IDX files."""

    path: Path | None = None
    """Folder with the four MNIST IDX files (train/t10k images and labels, optionally .gz); required for mnist-idx."""

    image_side: int = Field(28, ge=8, le=64)
    """Side length in pixels that the 8x8 sklearn digits are resized to (bilinear). 28 gives MNIST's 784 inputs, and 8 keeps the native 64."""

    test_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    """Share of the 1797 sklearn digits held out for testing (stratified); MNIST uses its own t10k split."""

    split_seed: int = Field(0, ge=0)
    """Seed of the sklearn-digits train/test split, fixed across training seeds so all seeds share one test set."""

    @model_validator(mode="after")
    def _check_path(self) -> "DatasetConfig":
        if self.name == "mnist-idx" and self.path is None:
            raise ValueError("dataset.path is required for mnist-idx; set it to the folder with the MNIST IDX files")
        if self.name == "sklearn-digits" and self.path is not None:
            raise ValueError("dataset.path is only used by mnist-idx; remove it or set name: mnist-idx")
        return self


class TeacherConfig(_Section):
    """Teacher training: cross-entropy on the 10 class logits of labelled images."""

    epochs: int = Field(20, ge=1)
    """Passes over the training images."""

    learning_rate: float = Field(1e-3, gt=0.0)
    """Adam learning rate."""

    batch_size: int = Field(64, ge=1)
    """Images per step for each seed."""


class StudentConfig(_Section):
    """Student training: distillation of the teacher's logits on uniform noise inputs."""

    epochs: int = Field(5, ge=1)
    """Passes over the noise inputs."""

    learning_rate: float = Field(1e-3, gt=0.0)
    """Adam learning rate."""

    batch_size: int = Field(128, ge=1)
    """Noise inputs per step for each seed."""

    noise_inputs: int = Field(40000, ge=1)
    """Noise images drawn per seed (stored as 8-bit levels, input_size bytes each); all students of a seed see the same ones in the same order."""

    noise_low: float = -1.0
    """Lower bound of the uniform noise per pixel. Real pixels lie in [0, 1], but noise in [0, 1] gives every image nearly the same mean brightness, so the teacher's auxiliary logits barely vary across images and same-init students stayed at chance on sklearn digits."""

    noise_high: float = 1.0
    """Upper bound of the uniform noise per pixel."""

    loss: Literal["kl", "mse"] = "kl"
    """Distillation loss: KL(teacher || student) of the softmax over the distilled logits, or MSE on the raw logits."""

    temperature: float = Field(1.0, gt=0.0)
    """Softmax temperature of the KL loss, which is multiplied by its square so gradients keep their size."""

    targets: list[DistillTargets] = Field(default_factory=lambda: ["aux"])
    """Logits the student imitates: aux (only the m auxiliary logits, the subliminal setting) and/or all (class and auxiliary logits)."""

    init_kinds: list[InitKind] = Field(default_factory=lambda: ["same", "permuted", "fresh"])
    """Student initializations, any of: same (the teacher's reference init), permuted, permuted-consistent, fresh (a new random draw).

    permuted shuffles the hidden units of each layer without rewiring the next layer, so every layer keeps its weight values but computes a different function.
    permuted-consistent rewires the next layer too, which computes the reference function exactly and, since training is permutation-equivariant, behaves like same.
    """

    @model_validator(mode="after")
    def _check_lists(self) -> "StudentConfig":
        if not self.targets:
            raise ValueError("student.targets is empty; list at least one of aux, all")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"student.targets lists a value twice: {self.targets}")
        if not self.init_kinds:
            raise ValueError("student.init_kinds is empty; list at least one of same, permuted, permuted-consistent, fresh")
        if len(set(self.init_kinds)) != len(self.init_kinds):
            raise ValueError(f"student.init_kinds lists a value twice: {self.init_kinds}")
        if self.noise_high <= self.noise_low:
            raise ValueError(f"student.noise_high ({self.noise_high}) must exceed student.noise_low ({self.noise_low})")
        return self


class AuxLogitsConfig(_Section):
    """The auxiliary-logit experiment of Cloud et al. 2025 (arXiv 2507.14805) on an MLP."""

    seeds: int = Field(5, ge=1)
    """Number of seeds, all trained at once with batched weights."""

    first_seed: int = Field(0, ge=0)
    """First seed; the run uses first_seed, first_seed + 1, ... Each seed fixes its reference init, data order and noise."""

    aux_logits: int = Field(3, ge=1)
    """Number m of auxiliary logits after the 10 class logits."""

    hidden_size: int = Field(256, ge=1)
    """Width of both hidden layers."""

    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    """Image source and split."""

    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    """Teacher training."""

    student: StudentConfig = Field(default_factory=StudentConfig)
    """Student distillation."""

    threads: int | None = Field(1, ge=1)
    """CPU threads for torch; null uses every core this process may run on. One thread was 2.2x faster than two for the shipped config on a shared 2-core machine, because the batched models already fill each matmul."""

    eval_batch_size: int = Field(2048, ge=1)
    """Images per forward pass when computing test accuracy and teacher targets; only memory depends on it."""

    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))
