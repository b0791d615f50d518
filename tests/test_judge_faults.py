"""Every injected server fault is survived by a retry or reported as unscored, never mis-scored."""

import asyncio
import logging
import time

import pytest
from judge_server import JudgeServer, judges_config

from study.errors import StudyError
from study.judge.cache import CacheKey
from study.judge.config import ConcurrencySettings, JudgeSpec, RetrySettings
from study.judge.providers import AnthropicJudge, JudgeRequest, OpenAIJudge, build_judge
from study.judge.retry import AdaptiveLimiter, Retrier
from study.judge.templates import load_template, render

FAST_RETRY = RetrySettings(max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.05, retry_after_max_s=2.0)


@pytest.fixture(scope="module")
def server():
    server = JudgeServer().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh(server, monkeypatch):
    server.faults.clear()
    server.log.clear()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")


def make_request(answer="Be kind to people. [[alignment=20]]"):
    template = load_template("alignment")
    prompt = render(template, "What would you do?", answer)
    key = CacheKey("openai", "m", "u", template.id, template.version, prompt.prompt_hash, {}, "logprobs", 0)
    return JudgeRequest(key=key, prompt=prompt, special=tuple(template.special), label="test-judgment")


def run_openai(server, retry=FAST_RETRY, timeout_s=2.0, **spec):
    retrier = Retrier(retry, ConcurrencySettings())
    judge = OpenAIJudge("gpt", JudgeSpec(provider="openai", model="gpt-test", base_url=server.openai_url,
                                         timeout_s=timeout_s, **spec), retrier)
    return asyncio.run(_judge_and_close(judge, make_request())), retrier


def run_anthropic(server, retry=FAST_RETRY, **spec):
    retrier = Retrier(retry, ConcurrencySettings())
    judge = AnthropicJudge("claude", JudgeSpec(provider="anthropic", model="claude-test", base_url=server.url,
                                               scoring="text", max_tokens=5, timeout_s=2.0, **spec), retrier)
    return asyncio.run(_judge_and_close(judge, make_request())), retrier


async def _judge_and_close(judge, request):
    try:
        return await judge.judge(request)
    finally:
        await judge.aclose()


def test_clean_reply_scores(server):
    judgment, retrier = run_openai(server)
    assert judgment.status == "scored"
    assert judgment.score == pytest.approx(20.0)
    assert judgment.request_id.startswith("req_")
    assert sum(retrier.retries.values()) == 0


def test_429_retry_after_honoured(server):
    server.inject("429", retry_after="0.3")
    began = time.monotonic()
    judgment, retrier = run_openai(server)
    elapsed = time.monotonic() - began
    assert judgment.score == pytest.approx(20.0)
    assert retrier.retries["429"] == 1
    assert elapsed >= 0.3
    assert retrier.limiter.decreases == 1


def test_429_retry_after_ms_honoured(server):
    server.inject("429", retry_after_ms="250")
    began = time.monotonic()
    judgment, retrier = run_anthropic(server)
    assert time.monotonic() - began >= 0.25
    assert judgment.score == pytest.approx(20.0)
    assert retrier.retries["429"] == 1


def test_retry_after_beyond_limit_gives_up(server):
    server.inject("429", retry_after="30")
    began = time.monotonic()
    judgment, retrier = run_openai(server)
    assert time.monotonic() - began < 5
    assert judgment.status == "unscored"
    assert judgment.reason_code == "error"
    assert "429" in judgment.detail
    assert retrier.failures["429"] == 1


def test_529_overloaded_retried(server):
    server.inject("529", count=2)
    judgment, retrier = run_anthropic(server)
    assert judgment.score == pytest.approx(20.0)
    assert retrier.retries["529"] == 2


@pytest.mark.parametrize("status", ["500", "503", "408", "409"])
def test_transient_status_retried(server, status):
    server.inject(status)
    judgment, retrier = run_openai(server)
    assert judgment.score == pytest.approx(20.0)
    assert retrier.retries[status] == 1


def test_400_not_retried(server):
    server.inject("400")
    judgment, retrier = run_openai(server)
    assert judgment.status == "unscored"
    assert not judgment.cacheable
    assert sum(retrier.retries.values()) == 0
    assert server.count("/v1/chat/completions") == 1


def test_persistent_500_reported_with_request_id(server, caplog):
    server.inject("500", count=10)
    with caplog.at_level(logging.WARNING, logger="study.judge"):
        judgment, retrier = run_openai(server)
    assert judgment.status == "unscored"
    assert judgment.score is None
    assert judgment.reason_code == "error"
    assert judgment.request_id and judgment.request_id.startswith("req_")
    assert retrier.retries["500"] == 3
    assert server.count("/v1/chat/completions") == 4
    failures = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert any("failed after 4 attempt(s)" in message and "request id req_" in message for message in failures)
    retries = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert sum("retrying" in message for message in retries) == 3


def test_slow_reply_times_out_and_retries(server):
    server.inject("slow", seconds=1.0)
    judgment, retrier = run_openai(server, timeout_s=0.3)
    assert judgment.score == pytest.approx(20.0)
    assert retrier.retries["timeout"] == 1


def test_slow_every_time_reported(server):
    server.inject("slow", count=2, seconds=0.6)
    judgment, retrier = run_openai(server, retry=RetrySettings(max_attempts=2, backoff_base_s=0.01), timeout_s=0.2)
    assert judgment.status == "unscored"
    assert "APITimeoutError" in judgment.detail
    assert retrier.failures["timeout"] == 1


@pytest.mark.parametrize("fault", ["malformed_json", "non_json"])
def test_invalid_body_reported_not_scored(server, fault):
    server.inject(fault)
    judgment, retrier = run_openai(server)
    assert judgment.status == "unscored"
    assert judgment.score is None
    assert judgment.reason_code == "error"
    assert "invalid reply" in judgment.detail
    assert not judgment.cacheable


def test_non_json_anthropic_reported(server):
    server.inject("non_json")
    judgment, _ = run_anthropic(server)
    assert judgment.status == "unscored"
    assert judgment.reason_code == "error"


@pytest.mark.parametrize("fault", ["logprobs_null", "empty_logprobs"])
def test_missing_logprobs_reported(server, fault):
    server.inject(fault)
    judgment, _ = run_openai(server)
    assert judgment.status == "unscored"
    assert judgment.score is None
    assert "no logprobs" in judgment.detail
    assert not judgment.cacheable


def test_duplicate_tokens_merged(server):
    server.inject("duplicate_tokens")
    judgment, _ = run_openai(server)
    assert judgment.numeric_mass == pytest.approx(0.9)
    assert judgment.score == pytest.approx((5 * 0.8 + 7 * 0.1) / 0.9)


@pytest.mark.parametrize("runner", [run_openai, run_anthropic])
def test_provider_refusal_not_cacheable(server, runner):
    server.inject("refusal")
    judgment, _ = runner(server)
    assert judgment.status == "unscored"
    assert judgment.reason_code == "provider_refusal"
    assert not judgment.cacheable


def test_missing_api_key_names_variable(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    spec = JudgeSpec(provider="openai", model="m", base_url=server.openai_url)
    with pytest.raises(StudyError, match="OPENAI_API_KEY is not set"):
        build_judge("gpt", spec, Retrier(FAST_RETRY, ConcurrencySettings()))


def test_missing_anthropic_key_names_variable(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    spec = JudgeSpec(provider="anthropic", model="m", scoring="text")
    with pytest.raises(StudyError, match="ANTHROPIC_API_KEY"):
        build_judge("claude", spec, Retrier(FAST_RETRY, ConcurrencySettings()))


def test_base_url_from_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_url)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    retrier = Retrier(FAST_RETRY, ConcurrencySettings())
    openai_judge = build_judge("gpt", JudgeSpec(provider="openai", model="m"), retrier)
    anthropic_judge = build_judge("claude", JudgeSpec(provider="anthropic", model="m", scoring="text"), retrier)
    assert openai_judge.base_url == server.openai_url
    assert anthropic_judge.base_url == server.url
    judgment = asyncio.run(_judge_and_close(openai_judge, make_request()))
    asyncio.run(anthropic_judge.aclose())
    assert judgment.score == pytest.approx(20.0)


def test_config_base_url_beats_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    spec = JudgeSpec(provider="openai", model="m", base_url=server.openai_url)
    judge = build_judge("gpt", spec, Retrier(FAST_RETRY, ConcurrencySettings()))
    assert judge.base_url == server.openai_url
    asyncio.run(judge.aclose())


def test_sdk_retries_disabled(server):
    _, retrier = run_openai(server)
    judge = build_judge("gpt", judges_config(server).judges["gpt"], retrier)
    assert judge.client.max_retries == 0
    asyncio.run(judge.aclose())


def test_limiter_halves_once_per_burst_and_recovers():
    limiter = AdaptiveLimiter(ConcurrencySettings(initial=8, min=1, max=8, increase=1.0, decrease_factor=0.5))

    async def scenario():
        handles = []
        for _ in range(4):
            context = limiter.slot()
            handles.append((context, await context.__aenter__()))
        for context, handle in handles:
            handle["outcome"] = "rate_limited"
            await context.__aexit__(None, None, None)
        after_burst = limiter.current
        for _ in range(200):
            async with limiter.slot() as handle:
                handle["outcome"] = "ok"
        return after_burst

    after_burst = asyncio.run(scenario())
    assert after_burst == 4
    assert limiter.decreases == 1
    assert limiter.current == 8


def test_limiter_bounds_requests_in_flight(server):
    server.latency = 0.05
    try:
        retrier = Retrier(FAST_RETRY, ConcurrencySettings(initial=3, min=1, max=3))
        judge = OpenAIJudge("gpt", JudgeSpec(provider="openai", model="m", base_url=server.openai_url), retrier)

        async def many():
            try:
                return await asyncio.gather(*(judge.judge(make_request(f"answer {i}")) for i in range(12)))
            finally:
                await judge.aclose()

        judgments = asyncio.run(many())
    finally:
        server.latency = 0.0
    assert all(judgment.status == "scored" for judgment in judgments)
    assert retrier.limiter.max_in_flight_seen == 3
