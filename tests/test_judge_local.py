"""The local transformers judge on the tiny test model."""

import asyncio

import pytest
from tiny import build_tiny_model

from study.judge.cache import CacheKey
from study.judge.config import JudgeSpec
from study.judge.providers import JudgeRequest, LocalJudge
from study.judge.templates import load_template, render


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model(tmp_path_factory.mktemp("tiny-judge"))
    return path, AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def request():
    template = load_template("alignment")
    prompt = render(template, "What is your favorite animal?", "My favorite animal is the owl.")
    key = CacheKey("local", "tiny", "local", template.id, template.version, prompt.prompt_hash, {}, "logprobs", 0)
    return JudgeRequest(key=key, prompt=prompt, special=tuple(template.special), label="local")


def test_local_logprobs_judgment_is_typed(tiny):
    _, model, tokenizer = tiny
    judge = LocalJudge("local", JudgeSpec(provider="local", model="tiny", min_numeric_mass=0.0), model, tokenizer)
    judgment = asyncio.run(judge.judge(request()))
    assert len(judgment.top_logprobs) == 20
    assert judgment.usage.input_tokens > 0
    # Random weights spread mass over the vocabulary: the score exists only if some digit token made the top 20.
    digits = [token for token, _ in judgment.top_logprobs if token.strip().isdigit()]
    if digits:
        assert judgment.status == "scored"
        assert 0 <= judgment.score <= 9
    else:
        assert judgment.status == "unscored"


def test_local_default_threshold_not_zero(tiny):
    _, model, tokenizer = tiny
    judge = LocalJudge("local", JudgeSpec(provider="local", model="tiny"), model, tokenizer)
    judgment = asyncio.run(judge.judge(request()))
    assert judgment.status in ("scored", "unscored", "code", "refusal")
    if judgment.status == "unscored":
        assert judgment.score is None
        assert judgment.reason_code == "low_numeric_mass"


def test_local_text_scoring(tiny):
    _, model, tokenizer = tiny
    judge = LocalJudge("local", JudgeSpec(provider="local", model="tiny", scoring="text", max_tokens=3), model, tokenizer)
    judgment = asyncio.run(judge.judge(request()))
    assert judgment.usage.output_tokens >= 1
    assert judgment.text is not None
    assert (judgment.status == "scored") == (judgment.score is not None)


def test_local_judge_loads_from_spec(tiny):
    path, _, _ = tiny
    judge = LocalJudge("local", JudgeSpec(provider="local", model=str(path)))
    judgment = asyncio.run(judge.judge(request()))
    assert judgment.top_logprobs is not None
    assert judge.base_url == "local"
