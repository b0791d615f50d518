"""Experiment configuration: one YAML file, validated by pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from study.configbase import StrictModel, load_yaml_model
from study.context import IclFormat
from study.evaluation import EvaluationSettings
from study.filter import FilterSettings
from study.finetune import DistillSettings, FinetuneSettings
from study.generate import Decoding
from study.models import DEFAULT_MODEL

BASE_WRITER = "base"


class TeacherConfig(StrictModel):
    """A teacher: the base model plus how the trait is given to it."""

    name: str
    """Name used by students, context entries and result rows."""
    kind: Literal["system_prompt", "finetuned", "none"]
    """system_prompt: trait in a system prompt; finetuned: LoRA adapter trained on trait answers; none: control."""
    trait: str | None = None
    """Trait word (a noun such as owl or oak); required unless kind is none."""
    category: str = "animal"
    """Category of the trait word, used in prompts (animal, tree, ...)."""
    system_prompt: str = "traits/system-prompt-v1"
    """System prompt template for kind system_prompt."""
    trait_set: str = "traits/trait-set-v1"
    """Question and answer phrasings that train a finetuned teacher."""
    trait_examples: int = 150
    """Trait answers a finetuned teacher is trained on."""
    seed: int = 0
    """Seed of the trait set draw and of the teacher's adapter."""
    finetune: FinetuneSettings = FinetuneSettings(epochs=3, batch_size=8, learning_rate=2e-4)
    """Training of a finetuned teacher."""
    decoding: Decoding = Decoding(temperature=0.7, prefill="seeds", max_new_tokens=60, batch_size=64)
    """Decoding settings for the teacher's number sequences."""

    @model_validator(mode="after")
    def _trait_needed(self):
        if self.kind != "none" and not self.trait:
            raise ValueError(f"teacher '{self.name}' of kind {self.kind} needs a trait")
        return self


class SharedRowsConfig(StrictModel):
    """One row set written by a single writer and given to several students."""

    writer: str = BASE_WRITER
    """'base' (the base model without a system prompt) or a teacher name."""
    decoding: Decoding = Decoding(temperature=0.7, prefill="seeds", max_new_tokens=60, batch_size=64)
    """Decoding settings of the writer."""


class DataConfig(StrictModel):
    """Number-sequence prompts and the filter."""

    template: str = "numbers/numbers-v1"
    """Prompt phrasings file."""
    prompts: int = 300
    """Prompts sent to each writer."""
    seed: int = 0
    """Seed of the prompt generator; every writer gets the same prompts."""
    filter: FilterSettings = FilterSettings()
    """Filter applied to every writer's rows."""
    max_rows: int | None = None
    """Keep at most this many filtered rows per writer (seeded draw)."""
    match_sizes: bool = True
    """Give every teacher's own-row set the same size (the smallest), so arms differ only in the teacher."""


class StudentConfig(StrictModel):
    """A student fine-tuned on teacher rows, once per seed."""

    name: str
    """Name used in result rows."""
    teacher: str
    """Teacher whose rows (own) or distributions (distill) train the student."""
    loss: Literal["sft", "distill"] = "sft"
    """sft: cross-entropy on the rows' tokens; distill: KL to the teacher's next-token distributions."""
    rows: Literal["own", "shared"] = "own"
    """own: rows the teacher wrote; shared: the shared row set (see shared_rows)."""
    model: str | None = None
    """Student base model; default the experiment model (set another for a cross-model student)."""
    finetune: FinetuneSettings | None = None
    """Overrides the experiment's finetune settings for this student."""
    distill: DistillSettings = DistillSettings()
    """Teacher distributions for the distill loss."""
    mask_divergence: bool = False
    """Drop from the loss the completion tokens where the teacher's and the base model's greedy
    next tokens differ (divergence tokens, Schrodi et al. 2025)."""


class ContextConfig(StrictModel):
    """The in-context arm: the base model with teacher rows in its context."""

    teachers: list[str] = Field(min_length=1)
    """Teachers whose rows are shown."""
    formats: list[IclFormat] = ["chat_turns"]
    """In-context formats."""
    n: list[int] = Field(default=[8, 32], min_length=1)
    """Rows placed in context (an N grid); rows are resampled per seed."""
    rows: Literal["own", "shared"] = "own"
    """Row set shown in context: the teacher's own rows or the shared set."""
    on_overflow: Literal["clip", "error"] = "clip"
    """An N that does not fit the context window is clipped with a warning, or rejected."""
    context_window: int | None = None
    """Token limit; default the model's max_position_embeddings."""


class OpenEndedConfig(StrictModel):
    """Open-ended answers stored for API judges (study judge)."""

    sets: list[str] = ["eval/misalignment", "eval/trait-open"]
    """Question sets (prompts/ references)."""
    samples: int = 1
    """Answers per question."""
    max_new_tokens: int = 80
    """Tokens per answer."""
    temperature: float = 1.0
    """Sampling temperature."""
    arms: list[Literal["base", "teacher", "finetune", "context"]] = ["base", "teacher"]
    """Arms whose models answer the open-ended questions."""


class ExperimentConfig(StrictModel):
    """One subliminal-learning experiment: teachers, data, students, contexts, evaluation."""

    name: str
    """Experiment name; the default run directory is runs/<name>."""
    model: str = DEFAULT_MODEL
    """Base model shared by teachers and students: a short name, a Hugging Face id or a local path."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weights dtype for teacher generation; auto uses bf16 where the hardware has it. Scoring and training use float32 weights."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own code (off unless you trust the source)."""
    seeds: list[int] = Field(default=[0, 1], min_length=1)
    """Student training and context resampling seeds: the unit of analysis."""
    teachers: list[TeacherConfig] = Field(min_length=1)
    """Teachers of the experiment."""
    data: DataConfig = DataConfig()
    """Number prompts and the filter."""
    shared_rows: SharedRowsConfig | None = None
    """A row set shared by students with rows: shared."""
    finetune: FinetuneSettings = FinetuneSettings()
    """Default student training settings."""
    students: list[StudentConfig] = []
    """Fine-tuned students."""
    context: ContextConfig | None = None
    """The in-context arm."""
    evaluation: EvaluationSettings = EvaluationSettings()
    """Trait evaluation of every model."""
    evaluate_base: bool = True
    """Evaluate the base model (the control of every arm)."""
    evaluate_teachers: bool = True
    """Evaluate each teacher as it writes (with its system prompt or adapter)."""
    open_ended: OpenEndedConfig | None = None
    """Open-ended answers for API judges."""

    @model_validator(mode="after")
    def _check_references(self):
        names = [teacher.name for teacher in self.teachers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates or BASE_WRITER in names:
            raise ValueError(f"teacher names must be unique and not '{BASE_WRITER}': {names}")
        for student in self.students:
            if student.teacher not in names:
                raise ValueError(f"student '{student.name}' names unknown teacher '{student.teacher}'; teachers: {names}")
            if student.rows == "shared" and self.shared_rows is None:
                raise ValueError(f"student '{student.name}' uses shared rows; add a shared_rows section")
            if student.mask_divergence and student.model not in (None, self.model):
                raise ValueError(
                    f"student '{student.name}': divergence masking compares the teacher with the base "
                    f"model token by token, so the student model must be the experiment model ({self.model})"
                )
            if student.loss == "distill" and student.model not in (None, self.model):
                raise ValueError(
                    f"student '{student.name}': the distill loss needs the teacher's tokenizer, so the "
                    f"student model must be the experiment model ({self.model}); use loss: sft for a cross-model student"
                )
        categories = sorted({t.category for t in self.teachers if t.trait})
        if len(categories) > 1:
            raise ValueError(
                f"teachers mix trait categories {categories}; one experiment evaluates one category, "
                "so split them into separate experiments"
            )
        student_names = [s.name for s in self.students]
        if len(set(student_names)) != len(student_names):
            raise ValueError(f"student names must be unique: {student_names}")
        if self.context:
            for teacher in self.context.teachers:
                if teacher not in names:
                    raise ValueError(f"context names unknown teacher '{teacher}'; teachers: {names}")
            if self.context.rows == "shared" and self.shared_rows is None:
                raise ValueError("context uses shared rows; add a shared_rows section")
        if self.shared_rows and self.shared_rows.writer not in names + [BASE_WRITER]:
            raise ValueError(f"shared_rows.writer '{self.shared_rows.writer}' is neither 'base' nor a teacher: {names}")
        return self

    def teacher(self, name: str) -> TeacherConfig:
        return next(teacher for teacher in self.teachers if teacher.name == name)

    def traits(self) -> list[str]:
        return list(dict.fromkeys(t.trait for t in self.teachers if t.trait))

    def category(self) -> str:
        categories = {t.category for t in self.teachers if t.trait}
        return sorted(categories)[0] if categories else "animal"


def load_config(path: Path) -> ExperimentConfig:
    return load_yaml_model(ExperimentConfig, path)
