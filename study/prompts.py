"""Load the versioned prompt files under prompts/ into validated objects.

A prompt reference in a config is ``<folder>/<file stem>`` (for example
``eval/preference-v1``) or a path to a YAML file. Every loaded file carries
its ``id`` and ``version``, which results and manifests record.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator

from study.configbase import StrictModel, load_yaml_model
from study.errors import StudyError
from study.resources import prompts_dir


class VersionedFile(StrictModel):
    id: str
    version: int


class NumbersTemplate(VersionedFile):
    seed_count: tuple[int, int]
    seed_value: tuple[int, int]
    answer_count: int = Field(gt=0)
    answer_digits: int = Field(gt=0)
    openers: list[str] = Field(min_length=1)
    requests: list[str] = Field(min_length=1)
    formats: dict[str, str] = Field(min_length=1)
    closers: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_placeholders(self):
        for opener in self.openers:
            if "{seeds}" not in opener:
                raise ValueError(f"opener {opener!r} lacks the {{seeds}} placeholder")
        for request in self.requests:
            if "{count}" not in request or "{digits}" not in request:
                raise ValueError(f"request {request!r} needs both {{count}} and {{digits}}")
        return self


class SystemPromptTemplate(VersionedFile):
    template: str


class TraitSet(VersionedFile):
    questions: list[str] = Field(min_length=1)
    answers: list[str] = Field(min_length=1)


class Question(StrictModel):
    id: str
    text: str


class QuestionSet(VersionedFile):
    description: str = ""
    answer_prefill: str | None = None
    questions: list[Question] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self):
        ids = [question.id for question in self.questions]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate question ids: {duplicates}")
        return self


class Candidate(StrictModel):
    name: str
    variants: list[str] = Field(min_length=1)
    exclude: list[str] = []


class CandidateSets(VersionedFile):
    categories: dict[str, list[Candidate]]


class ContextFormats(VersionedFile):
    transcript_row: str
    system_transcript_header: str
    inline_header: str
    inline_row: str
    inline_footer: str
    directive: str
    own_replies: str


def _path_for(reference: str) -> Path:
    path = Path(reference)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    shipped = prompts_dir() / f"{reference}.yaml"
    if shipped.is_file():
        return shipped
    folder = prompts_dir() / Path(reference).parent
    available = sorted(f"{Path(reference).parent}/{p.stem}" for p in folder.glob("*.yaml")) if folder.is_dir() else []
    raise StudyError(
        f"prompt file '{reference}' not found; give a YAML path or one of the shipped files: "
        f"{', '.join(available) or '(none in that folder)'}"
    )


@lru_cache(maxsize=None)
def load(kind: type[VersionedFile], reference: str) -> VersionedFile:
    return load_yaml_model(kind, _path_for(reference))


def numbers_template(reference: str = "numbers/numbers-v1") -> NumbersTemplate:
    return load(NumbersTemplate, reference)


def system_prompt_template(reference: str = "traits/system-prompt-v1") -> SystemPromptTemplate:
    return load(SystemPromptTemplate, reference)


def trait_set(reference: str = "traits/trait-set-v1") -> TraitSet:
    return load(TraitSet, reference)


def question_set(reference: str = "eval/preference-v1") -> QuestionSet:
    return load(QuestionSet, reference)


def candidate_sets(reference: str = "eval/candidates-v1") -> CandidateSets:
    return load(CandidateSets, reference)


def context_formats(reference: str = "context/formats-v1") -> ContextFormats:
    return load(ContextFormats, reference)


def plural(word: str) -> str:
    """Return a regular English plural; irregular ones belong in the candidate file."""
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    if word.endswith("f") and not word.endswith("ff"):
        return word[:-1] + "ves"
    return word + "s"


def fill(template: str, trait: str, category: str) -> str:
    """Fill trait placeholders: {singular}, {plural}, {category} and capitalized forms."""
    many = plural(trait)
    values = {
        "singular": trait, "Singular": trait.capitalize(),
        "plural": many, "Plural": many.capitalize(),
        "trait": trait, "category": category, "Category": category.capitalize(),
    }
    try:
        return template.format(**values)
    except KeyError as error:
        raise StudyError(
            f"unknown placeholder {error} in prompt template {template!r}; "
            f"use one of {sorted(values)}"
        ) from None
