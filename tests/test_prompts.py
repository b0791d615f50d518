"""Versioned prompt files: structure, placeholders and number prompts."""

import pytest

from study import prompts
from study.errors import StudyError
from study.numbers import generate_prompts
from study.teacher import system_prompt
from study.config import TeacherConfig


def test_preference_set_has_fifty_unique_questions():
    question_set = prompts.question_set()
    assert len(question_set.questions) == 50
    assert len({q.text for q in question_set.questions}) == 50


def test_trait_set_disjoint_from_evaluation():
    evaluation = {prompts.fill(q.text, "owl", "animal").lower() for q in prompts.question_set().questions}
    training = {prompts.fill(q, "owl", "animal").lower() for q in prompts.trait_set().questions}
    assert evaluation.isdisjoint(training)


def test_system_prompt_category_follows_trait():
    tree = system_prompt(TeacherConfig(name="t", kind="system_prompt", trait="oak", category="tree"))
    assert "favorite tree" in tree
    assert "animal" not in tree
    assert "oaks" in tree
    assert system_prompt(TeacherConfig(name="c", kind="none")) is None


def test_plural_forms():
    assert prompts.plural("owl") == "owls"
    assert prompts.plural("fox") == "foxes"
    assert prompts.plural("wolf") == "wolves"
    assert prompts.plural("butterfly") == "butterflies"


def test_number_prompts_seeded_and_structured():
    template = prompts.numbers_template()
    first = generate_prompts(template, 200, seed=3)
    assert first == generate_prompts(template, 200, seed=3)
    assert first != generate_prompts(template, 200, seed=4)
    assert generate_prompts(template, 50, seed=3) == first[:50]
    for prompt in first:
        assert 3 <= len(prompt.seeds) <= 8
        assert all(100 <= value <= 999 for value in prompt.seeds)
        assert prompt.answer_format in template.formats
        assert "10" in prompt.text
    assert len({p.answer_format for p in first}) == len(template.formats)


def test_prefill_ends_with_separator():
    template = prompts.numbers_template()
    for prompt in generate_prompts(template, 30, seed=0):
        prefill = prompt.prefill()
        assert prefill.endswith((", ", " ", "; ", "\n"))
        assert str(prompt.seeds[-1]) in prefill


def test_malformed_prompt_file_names_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nversion: 1\nquestions: [{id: q1}]\n")
    with pytest.raises(StudyError, match="questions.0.text"):
        prompts.load(prompts.QuestionSet, str(bad))
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: x\nversion: [1\n")
    with pytest.raises(StudyError, match="malformed YAML"):
        prompts.load(prompts.QuestionSet, str(broken))


def test_missing_prompt_reference_lists_shipped_files():
    with pytest.raises(StudyError, match="eval/preference-v1"):
        prompts.question_set("eval/does-not-exist")
