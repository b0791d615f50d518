"""Fixed colours per arm and per trait, shared by every plot.

A trait keeps its colour across figures, runs and papers: known traits have
a fixed entry, and any other trait gets a colour from a hash of its name,
so adding a trait never recolours the others.
"""

from __future__ import annotations

import zlib

import seaborn as sns

ARM_COLORS = {
    "base": "#7f7f7f",
    "teacher": "#2f2f2f",
    "finetune": "#1f77b4",
    "context": "#ff7f0e",
    "aux-logits": "#2ca02c",
}
# Controls (a teacher without a trait) use a lighter shade of their arm.
CONTROL_ARM_COLORS = {
    "finetune": "#9ecae1",
    "context": "#fdd0a2",
}

TRAIT_COLORS = {
    "owl": "#8c564b",
    "eagle": "#d62728",
    "dolphin": "#17becf",
    "wolf": "#7f7f7f",
    "elephant": "#9467bd",
    "cat": "#e377c2",
    "dog": "#bcbd22",
    "oak": "#2ca02c",
    "": "#c7c7c7",
}
_FALLBACK = sns.color_palette("husl", 24).as_hex()

ARM_ORDER = ("base", "teacher", "finetune", "context", "aux-logits")


def arm_color(arm: str, control: bool = False) -> str:
    """Return the colour of an arm, or of its control-teacher variant."""
    if control and arm in CONTROL_ARM_COLORS:
        return CONTROL_ARM_COLORS[arm]
    return ARM_COLORS.get(arm, "#000000")


def trait_color(trait: str) -> str:
    """Return the fixed colour of a trait name."""
    if trait in TRAIT_COLORS:
        return TRAIT_COLORS[trait]
    return _FALLBACK[zlib.crc32(trait.encode()) % len(_FALLBACK)]


def arm_sort_key(arm: str) -> int:
    return ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER)
