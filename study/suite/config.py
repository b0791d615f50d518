"""Suite configuration: a base experiment, factors with levels, and executor settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from study.config import ExperimentConfig
from study.configbase import StrictModel, load_yaml_model
from study.context import IclFormat

Arm = Literal["base", "teacher", "finetune", "context", "control", "control_context", "shuffled", "wrong_trait"]
FINETUNE_ARMS = ("finetune", "control", "shuffled", "wrong_trait")
CONTEXT_ARMS = ("context", "control_context")
CONTROL_ARMS = ("control", "control_context")


class Factors(StrictModel):
    """Levels of each factor; an omitted factor takes the base experiment's value."""

    traits: list[str] | None = None
    """Trait words; default the trait of the base's first teacher."""
    arm: list[Arm] = Field(default=["finetune", "context"], min_length=1)
    """base: the base model; teacher: the teacher itself; finetune: a student trained on the teacher's rows;
    context: the base model with the rows in context; control / control_context: the same with rows of a
    teacher without a trait; shuffled: a student trained on rows whose numbers are shuffled across rows;
    wrong_trait: a student measured for trait X but trained on rows of the teacher of the next trait in the list."""
    n: list[int] | None = Field(default=None, min_length=1)
    """Rows placed in context (context arms) or rows trained on (fine-tuned arms); default all filtered rows
    for students and the base's context.n for context arms."""
    epochs: list[int] | None = Field(default=None, min_length=1)
    """Student training epochs."""
    lora_rank: list[int] | None = Field(default=None, min_length=1)
    """Student LoRA rank; alpha keeps the base's alpha/rank ratio."""
    teacher_kind: list[Literal["system_prompt", "finetuned", "none"]] | None = Field(default=None, min_length=1)
    """Teacher kinds (system_prompt, finetuned, none); none turns trait arms into their control arms."""
    temperature: list[float] | None = Field(default=None, min_length=1)
    """Teacher sampling temperature when writing number sequences."""
    student_model: list[str] | None = Field(default=None, min_length=1)
    """Student base models (cross-model pairs); the teacher stays the base model."""
    icl_format: list[IclFormat] | None = Field(default=None, min_length=1)
    """In-context formats; default the base's context.formats (first entry)."""
    seeds: list[int] | None = Field(default=None, min_length=1)
    """Student training and context resampling seeds, one cell per seed; default the base's seeds."""

    @model_validator(mode="after")
    def _positive_levels(self):
        for name in ("n", "epochs", "lora_rank"):
            levels = getattr(self, name) or []
            if any(level < 1 for level in levels):
                raise ValueError(f"factor '{name}' levels must be at least 1, got {levels}")
        return self


class SlurmSettings(StrictModel):
    """Resources of each Slurm job (one job per cell), passed to submitit."""

    cluster: Literal["slurm", "local"] = "slurm"
    """slurm: submit with sbatch; local: submitit's LocalExecutor, one local process per cell."""
    partition: str | None = None
    """Slurm partition; default the cluster's default partition."""
    timeout_min: int = 240
    """Time limit of one cell's job, in minutes."""
    cpus_per_task: int = 4
    """CPU cores per cell job."""
    gpus_per_node: int = 0
    """GPUs per cell job."""
    mem_gb: float = 32
    """Memory per cell job, in GB."""
    additional_parameters: dict[str, str] = {}
    """Extra sbatch options, for example {account: my-account}."""


class RaySettings(StrictModel):
    """Ray cluster address and the resources each cell task reserves."""

    address: str | None = None
    """Cluster address ('auto' for a running cluster); default a Ray instance already started in this process,
    else a new local one."""
    num_cpus: float = 1
    """CPUs reserved per cell task."""
    num_gpus: float = 0
    """GPUs reserved per cell task."""


class SuiteConfig(StrictModel):
    """An ablation suite: the base experiment and the factors whose grid makes the cells."""

    name: str
    """Suite name; the default suite directory is runs/<name>."""
    base: ExperimentConfig
    """Template experiment: its first teacher, first student and context give every setting a factor leaves alone."""
    factors: Factors = Factors()
    """Factors and their levels; the cells are the full grid, minus factors that do not apply to an arm."""
    retries: int = Field(default=1, ge=0)
    """Further attempts for a failed cell within one invocation."""
    max_workers: int | None = Field(default=None, ge=1)
    """Cells run at once; default the number of CPU cores (local) or 8 (slurm, ray)."""
    threads_per_cell: int = Field(default=1, ge=1)
    """torch threads inside each cell, so that concurrent cells do not oversubscribe the cores."""
    slurm: SlurmSettings = SlurmSettings()
    """Settings of the slurm executor."""
    ray: RaySettings = RaySettings()
    """Settings of the ray executor."""

    @model_validator(mode="after")
    def _check_factors(self):
        traits = self.traits()
        if "wrong_trait" in self.factors.arm and len(traits) < 2:
            raise ValueError(
                f"arm wrong_trait trains on another trait's rows, so factors.traits needs at least 2 traits, got {traits}"
            )
        trait_arms = [arm for arm in self.factors.arm if arm not in ("base",) + CONTROL_ARMS]
        if trait_arms and not traits:
            raise ValueError(
                f"arms {trait_arms} need a trait: set factors.traits or give base.teachers[0] a trait"
            )
        return self

    def traits(self) -> list[str]:
        if self.factors.traits:
            return list(dict.fromkeys(self.factors.traits))
        trait = self.base.teachers[0].trait
        return [trait] if trait else []


def load_suite(path: Path) -> SuiteConfig:
    return load_yaml_model(SuiteConfig, path)
