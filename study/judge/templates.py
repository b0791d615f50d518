"""Judge templates and evaluation question sets, loaded from versioned YAML.

The judged answer is wrapped in tags that carry a nonce, so text inside the
answer cannot close the tag and speak to the judge. The nonce is a hash of
the template, question and answer: it is stable across runs (the rendered
prompt, and so the cache key, does not change) and an answer cannot contain
its own hash, so no answer can forge the closing tag.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator

from study.configbase import StrictModel, load_yaml_model
from study.errors import StudyError
from study.resources import prompts_dir
from study.store import content_hash

NONCE_LENGTH = 16


class JudgeTemplate(StrictModel):
    """A judge prompt: system text, a user template and the special answers it allows."""

    id: str
    version: int = Field(ge=1)
    metric: str
    description: str = ""
    special: list[str] = Field(default_factory=list, description="non-numeric answers, e.g. CODE")
    system: str
    user: str

    @field_validator("user")
    @classmethod
    def _check_placeholders(cls, text: str) -> str:
        names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
        if names.count("answer_block") != 1:
            raise ValueError("the user template must contain {answer_block} exactly once")
        allowed = {"answer_block", "nonce", "question", "trait"}
        unknown = sorted(set(names) - allowed)
        if unknown:
            raise ValueError(f"unknown placeholders {unknown}; allowed: {sorted(allowed)}")
        return text


class Question(StrictModel):
    id: str
    text: str


class EvalSet(StrictModel):
    """A versioned set of open-ended evaluation questions."""

    id: str
    version: int = Field(ge=1)
    description: str = ""
    questions: list[Question]

    @field_validator("questions")
    @classmethod
    def _check_unique(cls, questions: list[Question]) -> list[Question]:
        ids = [question.id for question in questions]
        duplicates = sorted({item for item in ids if ids.count(item) > 1})
        if duplicates:
            raise ValueError(f"duplicate question ids {duplicates}")
        return questions


@dataclass(frozen=True)
class RenderedPrompt:
    """Chat messages for one judgment and the hash that keys the cache."""

    system: str
    user: str
    nonce: str
    prompt_hash: str

    def messages(self) -> list[dict]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]


def _resolve(kind: str, name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    shipped = prompts_dir() / kind / f"{path.stem}.yaml"
    if shipped.is_file():
        return shipped
    available = ", ".join(sorted(p.stem for p in (prompts_dir() / kind).glob("*.yaml")))
    raise StudyError(
        f"{kind} prompt file not found: {name_or_path}; give a YAML path or one of: {available}"
    )


@lru_cache(maxsize=64)
def load_template(name_or_path: str) -> JudgeTemplate:
    """Load a judge template by name (prompts/judge/NAME.yaml) or path."""
    return load_yaml_model(JudgeTemplate, _resolve("judge", name_or_path))


@lru_cache(maxsize=64)
def load_eval_set(name_or_path: str) -> EvalSet:
    """Load an evaluation question set by name (prompts/eval/NAME.yaml) or path."""
    return load_yaml_model(EvalSet, _resolve("eval", name_or_path))


def fill_question(text: str, trait: str = "", category: str = "") -> str:
    """Fill the {trait} and {category} placeholders of an evaluation question."""
    try:
        return text.format(trait=trait, category=category)
    except (KeyError, IndexError, ValueError) as error:
        raise StudyError(
            f"invalid placeholder in question text {text!r}: {error}; "
            "use only {trait} and {category}, and double literal braces"
        ) from None


def answer_nonce(template: JudgeTemplate, question: str, answer: str) -> str:
    """Return the delimiter nonce, a hash of everything the prompt is made of."""
    digest = hashlib.sha256()
    for part in ("judge-answer-delimiter", template.id, str(template.version), question, answer):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:NONCE_LENGTH]


def render(template: JudgeTemplate, question: str, answer: str, trait: str = "") -> RenderedPrompt:
    """Render a judge prompt with the answer wrapped in nonce-tagged delimiters."""
    nonce = answer_nonce(template, question, answer)
    close_tag = f"</answer-{nonce}>"
    if close_tag in answer or f"<answer-{nonce}>" in answer:
        # Cannot happen by chance (the nonce hashes the answer); fail loudly if it does.
        raise StudyError(
            f"the answer contains its own delimiter {close_tag}, so judging it is unsafe; "
            "edit the answer or raise the template version to change the nonce"
        )
    block = f"<answer-{nonce}>\n{answer}\n{close_tag}"
    user = template.user.format(answer_block=block, nonce=nonce, question=question, trait=trait)
    system = template.system.strip()
    prompt_hash = content_hash({"system": system, "user": user}, length=32)
    return RenderedPrompt(system=system, user=user, nonce=nonce, prompt_hash=prompt_hash)
