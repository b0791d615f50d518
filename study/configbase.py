"""Strict pydantic base model and YAML loading with readable errors."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from study.errors import StudyError

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _model_at(model: type[BaseModel], location: tuple) -> type[BaseModel] | None:
    """Walk a validation error location down to the model that owns its last key."""
    current: Any = model
    skip_key = False
    for part in location[:-1]:
        if isinstance(part, int) or current is None:
            continue
        if skip_key:
            # The key of a dict[str, Model] field, not a field name.
            skip_key = False
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return None
        annotation = field.annotation
        skip_key = _is_mapping(annotation)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = None
        for candidate in candidates:
            for inner in (candidate, *getattr(candidate, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    nested = inner
                    break
            if nested:
                break
        current = nested
    return current


def _is_mapping(annotation: Any) -> bool:
    import typing

    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if typing.get_origin(candidate) is dict or candidate is dict:
            return True
    return False


def describe_validation_error(error: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"invalid config {source}:"]
    for item in error.errors():
        location = tuple(item["loc"])
        dotted = ".".join(str(part) for part in location)
        if item["type"] == "extra_forbidden":
            owner = _model_at(model, location)
            valid = sorted(owner.model_fields) if owner else []
            nearest = difflib.get_close_matches(str(location[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{nearest[0]}'?" if nearest else ""
            lines.append(
                f"  unknown key '{dotted}'{hint} Valid keys here: {', '.join(valid)}"
            )
        else:
            lines.append(f"  {dotted or '(top level)'}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def validate_mapping(model: type[ModelT], data: Any, source: str) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise StudyError(describe_validation_error(error, model, source)) from None


def load_yaml(path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudyError(f"file not found: {path}; check the path") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise StudyError(f"malformed YAML in {path}: {error}; fix the syntax at the line shown") from None


def load_yaml_model(model: type[ModelT], path: Path) -> ModelT:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise StudyError(f"{path} must contain a YAML mapping at the top level, found {type(data).__name__}")
    return validate_mapping(model, data, str(path))
