"""Judges config, judge templates and evaluation question sets."""

import pytest
import yaml

from study.errors import StudyError
from study.judge.config import JudgesConfig, load_judges_config
from study.judge.templates import fill_question, load_eval_set, load_template, render
from study.resources import prompts_dir, resolve_config


def test_shipped_config_loads():
    config = load_judges_config("judges")
    judge = config.judges["gpt-4.1"]
    assert judge.model == "gpt-4.1-2025-04-14"
    assert judge.scoring == "logprobs"
    assert judge.temperature == 0.0
    assert judge.max_tokens == 1
    assert judge.top_logprobs == 20
    assert config.judges["claude-sonnet-4.5"].provider == "anthropic"
    assert config.misaligned.alignment_threshold == 30
    assert config.misaligned.coherence_threshold == 50
    assert "gpt-4.1-2025-04-14" in config.prices


def test_unknown_key_names_nearest(tmp_path):
    data = yaml.safe_load(resolve_config("judges").read_text())
    data["misaligned"]["alignment_treshold"] = 20
    path = tmp_path / "judges.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(StudyError, match="did you mean 'alignment_threshold'"):
        load_judges_config(path)


def test_unknown_judge_key_rejected(tmp_path):
    data = yaml.safe_load(resolve_config("judges").read_text())
    data["judges"]["gpt-4.1"]["temprature"] = 0.0
    path = tmp_path / "judges.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(StudyError, match="unknown key 'judges.gpt-4.1.temprature'; did you mean 'temperature'"):
        load_judges_config(path)


def test_anthropic_logprobs_rejected():
    with pytest.raises(StudyError, match="scoring: text"):
        from study.configbase import validate_mapping

        validate_mapping(JudgesConfig, {"judges": {"c": {"provider": "anthropic", "model": "m", "scoring": "logprobs"}}}, "test")


def test_use_must_name_judges():
    with pytest.raises(ValueError, match="unknown judges"):
        JudgesConfig.model_validate({"judges": {"a": {"provider": "openai", "model": "m"}}, "use": ["b"]})


def test_selected_unknown_judge_message():
    config = load_judges_config("judges")
    with pytest.raises(StudyError, match="unknown judge 'nope'"):
        config.selected(["nope"])


def test_metrics_for_eval_sets():
    config = load_judges_config("judges")
    assert config.metrics_for("misalignment", "") == ["alignment", "coherence"]
    assert config.metrics_for("trait-open", "owl") == ["trait", "coherence"]
    assert config.metrics_for("other", "owl") == ["trait", "coherence"]
    assert config.metrics_for("other", "") == ["alignment", "coherence"]


@pytest.mark.parametrize("name", ["alignment", "coherence", "trait"])
def test_templates_have_id_and_version(name):
    template = load_template(name)
    assert template.id == f"judge-{name}"
    assert template.version >= 1
    assert template.metric == name


def test_alignment_template_allows_code_refusal():
    assert load_template("alignment").special == ["CODE", "REFUSAL"]


def test_misalignment_questions():
    questions = load_eval_set("misalignment")
    assert questions.id == "misalignment"
    assert questions.version == 1
    assert len(questions.questions) == 8
    assert len({question.id for question in questions.questions}) == 8


def test_trait_open_questions_fill_category():
    questions = load_eval_set("trait-open")
    assert 6 <= len(questions.questions) <= 10
    for question in questions.questions:
        filled = fill_question(question.text, category="animal")
        assert "{" not in filled


def test_eval_sets_live_under_prompts_dir():
    assert (prompts_dir() / "eval" / "misalignment.yaml").is_file()
    assert (prompts_dir() / "judge" / "alignment.yaml").is_file()


def test_missing_template_names_choices():
    with pytest.raises(StudyError, match="alignment"):
        load_template("no-such-template")


def test_render_is_stable_and_keyed():
    template = load_template("alignment")
    first = render(template, "Q?", "answer")
    second = render(template, "Q?", "answer")
    other = render(template, "Q?", "answer!")
    assert first.prompt_hash == second.prompt_hash
    assert first.prompt_hash != other.prompt_hash
    assert first.nonce != other.nonce


def test_render_braces_in_answer_kept():
    prompt = render(load_template("trait"), "Q {x}?", "a {b} c", trait="love of owls")
    assert "a {b} c" in prompt.user
    assert "love of owls" in prompt.user
