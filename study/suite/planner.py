"""Expand a suite into cells and turn each cell into one small ExperimentConfig."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from functools import cached_property

from study.config import ExperimentConfig
from study.store import content_hash
from study.suite.config import CONTEXT_ARMS, CONTROL_ARMS, FINETUNE_ARMS, SuiteConfig

FINETUNE_ONLY = ("epochs", "lora_rank", "student_model")
CONTEXT_ONLY = ("icl_format",)
CONTROL_TEACHER = "control"


@dataclass(frozen=True)
class Cell:
    """One point of the factor grid; a factor that does not apply to the arm is None."""

    arm: str
    trait: str | None
    """Trait the cell is measured for; None for base and control arms, which are measured for every suite trait."""
    rows_trait: str | None
    """Trait of the teacher whose rows the cell uses (differs from ``trait`` only for wrong_trait)."""
    teacher_kind: str | None
    temperature: float | None
    n: int | None
    epochs: int | None
    lora_rank: int | None
    student_model: str | None
    icl_format: str | None
    seed: int | None

    @cached_property
    def id(self) -> str:
        return content_hash(asdict(self), length=12)

    def label(self) -> str:
        parts = [self.arm]
        if self.trait:
            parts.append(self.trait if self.rows_trait == self.trait else f"{self.trait} on {self.rows_trait} rows")
        names = {"teacher_kind": "", "temperature": "T=", "n": "N=", "epochs": "epochs=", "lora_rank": "rank=",
                 "student_model": "student=", "icl_format": "", "seed": "seed="}
        for field, prefix in names.items():
            value = getattr(self, field)
            if value is not None:
                parts.append(f"{prefix}{value}")
        return " ".join(parts)

    def as_dict(self) -> dict:
        return {**asdict(self), "id": self.id, "label": self.label()}


def _normalize(suite: SuiteConfig, values: dict) -> Cell | None:
    """Drop factors that do not apply to the arm, so equal experiments make one cell."""
    arm = values["arm"]
    if values["teacher_kind"] == "none":
        if arm in ("finetune", "wrong_trait"):
            arm = "control"
        elif arm == "context":
            arm = "control_context"
    if arm in CONTROL_ARMS:
        values["teacher_kind"] = "none"
    if arm == "base":
        values = {key: None for key in values}
    elif arm == "teacher":
        for key in ("n", "seed", *FINETUNE_ONLY, *CONTEXT_ONLY):
            values[key] = None
    elif arm in FINETUNE_ARMS:
        for key in CONTEXT_ONLY:
            values[key] = None
    elif arm in CONTEXT_ARMS:
        for key in FINETUNE_ONLY:
            values[key] = None
    trait = values["trait"]
    rows_trait = trait
    if arm in CONTROL_ARMS or values["teacher_kind"] == "none":
        trait = rows_trait = None
    elif arm == "wrong_trait":
        traits = suite.traits()
        rows_trait = traits[(traits.index(trait) + 1) % len(traits)]
    values.pop("trait")
    values.pop("arm")
    return Cell(arm=arm, trait=trait, rows_trait=rows_trait, **values)


def expand(suite: SuiteConfig) -> list[Cell]:
    """Return the suite's cells in a stable order, without duplicates."""
    factors = suite.factors
    base = suite.base
    teacher = base.teachers[0]
    grid = {
        "arm": factors.arm,
        "trait": suite.traits() or [None],
        "teacher_kind": factors.teacher_kind or [teacher.kind],
        "temperature": factors.temperature or [teacher.decoding.temperature],
        "n": factors.n or [None],
        "epochs": factors.epochs or [None],
        "lora_rank": factors.lora_rank or [None],
        "student_model": factors.student_model or [None],
        "icl_format": factors.icl_format or [None],
        "seed": factors.seeds or base.seeds,
    }
    names = list(grid)
    cells: dict[str, Cell] = {}
    for combination in itertools.product(*grid.values()):
        cell = _normalize(suite, dict(zip(names, combination)))
        cells.setdefault(cell.id, cell)
    return list(cells.values())


def teacher_name(kind: str, trait: str | None) -> str:
    return CONTROL_TEACHER if kind == "none" else f"{trait}-{kind.replace('_', '-')}"


def cell_config(suite: SuiteConfig, cell: Cell) -> ExperimentConfig:
    """Build the cell's experiment from the base: one teacher, at most one student or context arm."""
    base = suite.base.model_dump(mode="json")
    template = base["teachers"][0]
    kind = cell.teacher_kind or template["kind"]
    teacher = {**template, "name": teacher_name(kind, cell.rows_trait), "kind": kind,
               "trait": None if kind == "none" else (cell.rows_trait or template["trait"])}
    if cell.temperature is not None:
        teacher["decoding"] = {**teacher["decoding"], "temperature": cell.temperature}

    config = {**base, "name": f"{suite.name}-{cell.id}", "teachers": [teacher], "students": [],
              "context": None, "shared_rows": None, "evaluate_base": cell.arm == "base",
              "evaluate_teachers": cell.arm == "teacher"}
    if cell.seed is not None:
        config["seeds"] = [cell.seed]
    if cell.arm in FINETUNE_ARMS:
        config["students"] = [_student(base, cell, teacher["name"])]
        if cell.n is not None:
            config["data"] = {**base["data"], "max_rows": cell.n}
    elif cell.arm in CONTEXT_ARMS:
        context = dict(base["context"] or {})
        context.update({"teachers": [teacher["name"]], "rows": "own"})
        context["formats"] = [cell.icl_format or context.get("formats", ["chat_turns"])[0]]
        if cell.n is not None:
            context["n"] = [cell.n]
        config["context"] = context
    return ExperimentConfig.model_validate(config)


def _student(base: dict, cell: Cell, teacher: str) -> dict:
    template = dict(base["students"][0]) if base["students"] else {}
    settings = dict(template.get("finetune") or base["finetune"])
    if cell.epochs is not None:
        settings["epochs"] = cell.epochs
    if cell.lora_rank is not None:
        lora = dict(settings["lora"])
        # Keep alpha/rank, so a rank change does not also change the effective learning rate.
        lora["alpha"] = max(1, round(lora["alpha"] * cell.lora_rank / lora["rank"]))
        lora["rank"] = cell.lora_rank
        settings["lora"] = lora
    prefix = "shuffled-" if cell.arm == "shuffled" else ""
    return {**template, "name": f"sft-{prefix}{teacher}", "teacher": teacher, "rows": "own",
            "model": cell.student_model or template.get("model"), "finetune": settings}
