"""LLM judges for open-ended answers: alignment, coherence and trait scores.

Providers: OpenAI (expected score from top-20 logprobs, or text), Anthropic
(parsed text, optionally averaged over samples) and a local Hugging Face
model. Verdicts are typed (a number, CODE, REFUSAL, or unscored with a
reason) and cached in SQLite, so a judged run is never paid for twice.
"""

from study.judge.config import JudgesConfig, JudgeSpec, load_judges_config
from study.judge.scoring import Judgment, score_from_logprobs, score_from_text

__all__ = [
    "JudgeSpec",
    "JudgesConfig",
    "Judgment",
    "load_judges_config",
    "score_from_logprobs",
    "score_from_text",
]
