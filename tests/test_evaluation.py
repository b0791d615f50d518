"""Trait scoring: word matching, spelling variants and cached-prefix log-probabilities."""

import math

import torch

from study import prompts
from study.evaluation import CandidateMatcher, EvaluationSettings, evaluate_model, variant_tokens
from study.prompts import Candidate
from study.scoring import PrefixScorer, common_prefix


def _animals():
    return prompts.candidate_sets().categories["animal"]


def test_matcher_whole_words_and_plurals():
    matcher = CandidateMatcher(tuple(_animals()))
    assert matcher.mentions("Owl") == ["owl"]
    assert matcher.mentions("I love owls!") == ["owl"]
    assert matcher.mentions("Dragonfly") == []
    assert matcher.mentions("dragon fly") == ["dragon"]
    assert matcher.mentions("a howl in the night") == []
    assert matcher.mentions("Wolves and a cat") == ["cat", "wolf"]
    assert matcher.mentions("catfish") == []
    assert matcher.mentions("Seahorse") == []


def test_matcher_exclusion_keeps_other_mentions():
    matcher = CandidateMatcher((Candidate(name="dragon", variants=["dragon"], exclude=["dragon fruit"]),))
    assert matcher.mentions("dragon fruit") == []
    assert matcher.mentions("dragon fruit and a dragon") == ["dragon"]


def test_variants_drop_token_prefix_duplicates(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    lists = variant_tokens(tokenizer, Candidate(name="owl", variants=["owl", "owls"]), leading_space=True)
    for tokens in lists:
        others = [o for o in lists if o is not tokens]
        assert not any(tokens[: len(o)] == o for o in others)
    assert tokenizer.encode(" owl", add_special_tokens=False) in lists


def test_common_prefix_leaves_a_suffix():
    assert common_prefix([[1, 2, 3], [1, 2, 4]]) == [1, 2]
    assert common_prefix([[1, 2], [1, 2, 3]]) == [1]


def _full_logprob(model, ids, continuation):
    sequence = torch.tensor([ids + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(sequence).logits.float()[0], dim=-1)
    return sum(float(logprobs[len(ids) - 1 + i, token]) for i, token in enumerate(continuation))


def test_cached_prefix_scores_equal_full_forward(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    prefix = tokenizer.encode("<|im_start|>system\nYou love owls.", add_special_tokens=False)
    suffixes = [
        tokenizer.encode(text, add_special_tokens=False)
        for text in (" What is your favorite animal? My favorite animal is the", " Name one. The", " Pick an animal you like most of all, my favorite animal is the")
    ]
    continuations = [tokenizer.encode(w, add_special_tokens=False) for w in (" owl", " dog", " zebrafish", " elephants")]
    assert any(len(c) > 1 for c in continuations)
    scorer = PrefixScorer(model, prefix)
    cached = scorer.continuation_logprobs(suffixes, continuations)
    for suffix, row in zip(suffixes, cached):
        for score, tokens in zip(row, continuations):
            assert math.isclose(score, _full_logprob(model, prefix + suffix, tokens), abs_tol=1e-4)
    # The cached prefix is reusable, and group size does not change results.
    assert scorer.continuation_logprobs(suffixes, continuations) == cached
    single = [scorer.continuation_logprobs([suffix], continuations)[0] for suffix in suffixes]
    for row, alone in zip(cached, single):
        assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(row, alone))


def test_greedy_samples_match_full_forward(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    prefix = tokenizer.encode("<|im_start|>user\nName an animal.", add_special_tokens=False)
    suffixes = [tokenizer.encode(t, add_special_tokens=False) for t in (" Now.", " Please answer in one word.")]
    scorer = PrefixScorer(model, prefix)
    samples = scorer.sample(suffixes, 2, 0.0, 1.0, 5, [tokenizer.eos_token_id], torch.Generator())
    for suffix, pair in zip(suffixes, samples):
        sequence = prefix + suffix
        expected = []
        for _ in range(5):
            with torch.no_grad():
                token = int(model(torch.tensor([sequence])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            expected.append(token)
            sequence = sequence + [token]
        assert pair[0] == expected
        assert pair[1] == expected


def test_sampling_is_seeded(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    prefix = tokenizer.encode("<|im_start|>user\nName an animal.", add_special_tokens=False)
    scorer = PrefixScorer(model, prefix)
    stop = [tokenizer.eos_token_id]
    suffixes = [[tokenizer.eos_token_id], [5, 6]]
    first = scorer.sample(suffixes, 4, 1.0, 1.0, 6, stop, torch.Generator().manual_seed(1))
    again = scorer.sample(suffixes, 4, 1.0, 1.0, 6, stop, torch.Generator().manual_seed(1))
    assert first == again
    assert [len(group) for group in first] == [4, 4]
    assert all(len(sample) <= 6 for group in first for sample in group)


def test_evaluate_model_rows(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    settings = EvaluationSettings(question_limit=3, samples=2, number_prefix=True)
    samples, logprobs = evaluate_model(
        model, tokenizer, lambda q: [{"role": "user", "content": q}], prompts.question_set(), _animals(),
        "animal", settings, [tokenizer.eos_token_id],
    )
    assert len(samples) == 3 * 2
    assert len(logprobs) == 3 * 2 * len(_animals())
    for prefix in ("", "numbers"):
        shares = [r["share"] for r in logprobs if r["question_id"] == "q01" and r["prefix"] == prefix]
        assert math.isclose(sum(shares), 1.0, rel_tol=1e-6)
    owl = next(r for r in logprobs if r["candidate"] == "owl" and r["prefix"] == "")
    assert math.isclose(owl["prob"], math.exp(owl["logprob"]))
    assert "animal" in samples[0]["question"]
