"""Locate the shipped prompts/ and configs/ folders.

In a checkout (or an editable install) they sit at the repository root; a
wheel carries them under ``study/_data``.
"""

from __future__ import annotations

from pathlib import Path

from study.errors import StudyError

_PACKAGE_DIR = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise StudyError(
        f"the shipped '{name}' folder was not found next to the study package "
        f"({_PACKAGE_DIR}); reinstall the package with 'pip install .'"
    )


def prompts_dir() -> Path:
    return _data_dir("prompts")


def configs_dir() -> Path:
    return _data_dir("configs")


def resolve_config(path_or_name: str | Path) -> Path:
    """Return a config path, trying the shipped configs/ for a bare name."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    for name in (path.name, f"{path.name}.yaml"):
        shipped = configs_dir() / name
        if shipped.is_file():
            return shipped
    available = ", ".join(sorted(p.stem for p in configs_dir().glob("*.yaml")))
    raise StudyError(
        f"config file not found: {path_or_name}; give a path to a YAML file "
        f"or one of the shipped configs: {available}"
    )
