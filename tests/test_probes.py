"""Entangled-number and divergence-token probes, and the loss mask, on the tiny model."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import typer
from typer.testing import CliRunner

from study.errors import StudyError
from study.finetune import FinetuneSettings, TrainingExample, _collate, completion_logits, tokenize_example, train
from study.generate import render_prompt
from study.models import load_model, load_tokenizer
from study.probes import cli as probes_cli
from study.probes.divergence import divergence_masks, masked_example, row_divergences, Teacher
from study.probes.entangled import (
    ProbeSettings,
    digit_token_ids,
    number_logprobs,
    prompting_deltas,
    ranking_table,
    run_entangled,
    select_numbers,
    trait_logprobs,
)
from study.teacher import messages

QUESTION = "What is your favorite animal?"
PREFILL = "My favorite animal is the"
TINY_DEFAULT_SYSTEM = "You are a tiny test assistant."
ROWS = [
    {"id": 3, "prompt": "Continue the sequence: 145, 267, 891.", "prefill": "145, 267, 891, ",
     "completion": "123, 456, 789"},
    {"id": 5, "prompt": "Return a comma-separated list of numbers.", "prefill": "",
     "completion": "10, 20, 30, 40"},
    {"id": 9, "prompt": "Write the numbers one per line.", "prefill": "7\n",
     "completion": "8\n9\n10"},
]


def _end_of_turn_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids("<|im_end|>")


# -- entangled numbers -------------------------------------------------------


def test_number_logprobs_match_full_forward(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    numbers = ["7", "42", "305"]
    scores = number_logprobs(model, tokenizer, None, QUESTION, PREFILL, numbers)
    digits = digit_token_ids(tokenizer)
    prompt_ids = tokenizer.encode(render_prompt(tokenizer, messages(None, QUESTION), PREFILL), add_special_tokens=False)
    for number, score in zip(numbers, scores):
        tokens = tokenizer.encode(" " + number, add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + tokens])).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        expected = sum(float(logprobs[len(prompt_ids) + i - 1, token]) for i, token in enumerate(tokens))
        expected += math.log(1 - float(logprobs[-1, digits].exp().sum()))
        assert score == pytest.approx(expected, abs=1e-4), number


def test_ranking_deterministic_and_covers_range(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    numbers = [str(value) for value in range(120)]
    first = number_logprobs(model, tokenizer, "You love owls.", QUESTION, PREFILL, numbers)
    second = number_logprobs(model, tokenizer, "You love owls.", QUESTION, PREFILL, numbers)
    assert first == second
    base = number_logprobs(model, tokenizer, None, QUESTION, PREFILL, numbers)
    table = ranking_table(numbers, first, base)
    assert table["number"].tolist() == numbers
    for rank in ("teacher_rank", "base_rank", "ratio_rank"):
        assert sorted(table[rank]) == list(range(1, len(numbers) + 1)), rank
    assert all(math.isfinite(value) for value in first)
    assert table["log_ratio"].abs().max() > 0


def test_ranking_teacher_equal_to_base_gives_zero_ratio(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    numbers = [str(value) for value in range(30)]
    teacher = number_logprobs(model, tokenizer, TINY_DEFAULT_SYSTEM, QUESTION, PREFILL, numbers)
    base = number_logprobs(model, tokenizer, None, QUESTION, PREFILL, numbers)
    table = ranking_table(numbers, teacher, base)
    assert table["log_ratio"].abs().max() < 1e-5
    assert table["ratio"].sub(1).abs().max() < 1e-5


def test_select_numbers_top_and_seeded_random():
    numbers = [str(value) for value in range(50)]
    table = ranking_table(numbers, [-float(value) for value in range(50)], [0.0] * 50)
    chosen = select_numbers(table, top_k=3, random_k=4, rank_by="teacher", seed=1)
    assert chosen["top"] == ["0", "1", "2"]
    assert len(chosen["random"]) == 4
    assert not set(chosen["random"]) & set(chosen["top"])
    assert select_numbers(table, 3, 4, "teacher", seed=1) == chosen
    assert select_numbers(table, 3, 4, "teacher", seed=2)["random"] != chosen["random"]
    with pytest.raises(StudyError, match="exceeds"):
        select_numbers(table, top_k=40, random_k=20, rank_by="teacher", seed=0)


def test_prompting_equal_system_prompt_zero_delta(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    settings = ProbeSettings(question_limit=4)
    systems = {"base": None, "explicit-default": TINY_DEFAULT_SYSTEM, "owls": "You love owls."}
    frame = prompting_deltas(trait_logprobs(model, tokenizer, systems, settings))
    assert len(frame) == 3 * 4
    same = frame[frame["condition"].isin(["base", "explicit-default"])]
    assert same["delta"].abs().max() < 1e-5
    owls = frame[frame["condition"] == "owls"]
    assert owls["delta"].abs().max() > 0


def test_run_entangled_selects_and_summarizes(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    settings = ProbeSettings(number_max=40, question_limit=2, top_k=3, random_k=2, seed=4)
    result = run_entangled(model, tokenizer, settings)
    assert len(result.ranking) == 41
    assert len(result.selected["top"]) == 3
    assert len(result.selected["random"]) == 2
    assert set(result.per_number["group"]) == {"top", "random"}
    assert len(result.per_number) == 5
    assert result.per_number["questions"].eq(2).all()
    assert result.summary.set_index("group").loc["top", "numbers"] == 3
    assert result.comparison["test"] == "Welch t"


# -- divergence tokens -------------------------------------------------------


def test_divergence_identical_teachers_all_false(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    masks = divergence_masks(ROWS, model, model, tokenizer, _end_of_turn_id(tokenizer))
    assert sorted(masks) == [3, 5, 9]
    for row in ROWS:
        example = tokenize_example(tokenizer, row["id"], messages(None, row["prompt"]), row["prefill"],
                                   row["completion"], _end_of_turn_id(tokenizer), 500)
        assert len(masks[row["id"]]) == len(example.input_ids) - example.completion_start
        assert not any(masks[row["id"]])


def test_divergence_different_teachers_nontrivial(tiny_model_and_tokenizer, tiny_numbers_model_dir):
    # Random tiny models with tied embeddings mostly predict their input token, so two seeds agree.
    # The model trained on number lists predicts other tokens.
    model, tokenizer = tiny_model_and_tokenizer
    other = load_model(str(tiny_numbers_model_dir))
    assert load_tokenizer(str(tiny_numbers_model_dir)).get_vocab() == tokenizer.get_vocab()
    masks = divergence_masks(ROWS, model, other, tokenizer, _end_of_turn_id(tokenizer))
    flags = [flag for row_flags in masks.values() for flag in row_flags]
    assert any(flags)
    assert not all(flags)
    strict = divergence_masks(ROWS, model, other, tokenizer, _end_of_turn_id(tokenizer), require_trait_token=True)
    for row_id in masks:
        assert all(flag <= loose for flag, loose in zip(strict[row_id], masks[row_id]))


def test_divergence_system_prompt_changes_greedy(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    same = row_divergences(ROWS, Teacher(model, None), Teacher(model, TINY_DEFAULT_SYSTEM), tokenizer,
                           _end_of_turn_id(tokenizer), batch_size=2)
    assert not any(flag for row in same for flag in row.divergent)
    changed = row_divergences(ROWS, Teacher(model, "You love owls. Owls are your favorite animal."),
                              Teacher(model, None), tokenizer, _end_of_turn_id(tokenizer), batch_size=2)
    assert [row.id for row in changed] == [3, 5, 9]
    assert [row.completion_ids for row in changed] == [row.completion_ids for row in same]


def test_masked_example_cuts_and_inverts(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    row = ROWS[0]
    full = tokenize_example(tokenizer, row["id"], messages(None, row["prompt"]), row["prefill"],
                            row["completion"], _end_of_turn_id(tokenizer), 500)
    kept = len(full.input_ids) - full.completion_start
    cut = tokenize_example(tokenizer, row["id"], messages(None, row["prompt"]), row["prefill"],
                           row["completion"], _end_of_turn_id(tokenizer), len(full.input_ids) - 2)
    flags = [index % 2 == 0 for index in range(kept)]
    masked = masked_example(cut, flags)
    assert masked.loss_mask == tuple(not flag for flag in flags[: kept - 2])
    with pytest.raises(StudyError, match="divergence flags"):
        masked_example(full, flags[:-1])


# -- loss mask ---------------------------------------------------------------


def _examples(tokenizer) -> list[TrainingExample]:
    return [
        tokenize_example(tokenizer, row["id"], messages(None, row["prompt"]), row["prefill"], row["completion"],
                         _end_of_turn_id(tokenizer), 500)
        for row in ROWS[:2]
    ]


def _gradients(model, examples, pad_id):
    model.zero_grad(set_to_none=True)
    input_ids, attention_mask, positions, targets = _collate(examples, pad_id)
    logits = completion_logits(model, input_ids, attention_mask, positions)
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    return loss.item(), [parameter.grad.clone() for parameter in model.parameters() if parameter.grad is not None]


def test_loss_mask_all_false_removes_example(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    kept, other = _examples(tokenizer)
    silenced = TrainingExample(other.id, other.input_ids, other.completion_start,
                               loss_mask=(False,) * (len(other.input_ids) - other.completion_start))
    alone_loss, alone_grads = _gradients(model, [kept], tokenizer.pad_token_id)
    mixed_loss, mixed_grads = _gradients(model, [kept, silenced], tokenizer.pad_token_id)
    plain_loss, _ = _gradients(model, [kept, other], tokenizer.pad_token_id)
    assert mixed_loss == pytest.approx(alone_loss, abs=1e-5)
    assert plain_loss != pytest.approx(alone_loss, abs=1e-5)
    for alone, mixed in zip(alone_grads, mixed_grads):
        assert torch.allclose(alone, mixed, atol=1e-6)


def test_loss_mask_partial_drops_positions(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    example = _examples(tokenizer)[0]
    count = len(example.input_ids) - example.completion_start
    mask = tuple(index % 3 != 0 for index in range(count))
    _, _, all_positions, all_targets = _collate([example], tokenizer.pad_token_id)
    masked = TrainingExample(example.id, example.input_ids, example.completion_start, loss_mask=mask)
    _, _, positions, targets = _collate([masked], tokenizer.pad_token_id)
    assert len(targets) == sum(mask)
    assert targets.tolist() == [t for t, keep in zip(all_targets.tolist(), mask) if keep]
    assert positions.tolist() == [p for p, keep in zip(all_positions.tolist(), mask) if keep]


def test_loss_mask_wrong_length_raises(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    example = _examples(tokenizer)[0]
    with pytest.raises(StudyError, match="loss_mask has 2 flags"):
        TrainingExample(example.id, example.input_ids, example.completion_start, loss_mask=(True, False))


def test_train_skips_fully_masked_batches(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    examples = [
        TrainingExample(e.id, e.input_ids, e.completion_start, loss_mask=(False,) * (len(e.input_ids) - e.completion_start))
        for e in _examples(tokenizer)
    ]
    settings = FinetuneSettings(epochs=1, batch_size=2, warmup_steps=0)
    summary = train(str(tiny_model_dir), examples, settings, seed=0, loss_kind="sft",
                    pad_id=tokenizer.pad_token_id, out_dir=tmp_path / "weights")
    assert summary["steps"] == 1
    assert summary["final_loss"] == 0.0


# -- command line ------------------------------------------------------------


@pytest.fixture()
def probes_app():
    app = typer.Typer()
    probes_cli.register(app)
    return app


def test_cli_probe_entangled_writes_outputs(probes_app, tiny_model_dir, tmp_path):
    out = tmp_path / "entangled"
    result = CliRunner().invoke(probes_app, [
        "probe-entangled", "--model", str(tiny_model_dir), "--number-max", "30", "--questions", "2",
        "--top-k", "2", "--random-k", "2", "--rank-by", "ratio", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["rank_by"] == "ratio"
    assert manifest["prompts"]["number_love"]["id"] == "number-love"
    assert len(pd.read_parquet(out / "ranking.parquet")) == 31
    assert set(pd.read_parquet(out / "prompting.parquet")["group"]) == {"base", "top", "random"}
    assert "Mean delta across numbers" in result.output


def test_cli_probe_divergence_writes_masks(probes_app, tiny_model_dir, tiny_numbers_model_dir, tmp_path):
    rows_path = tmp_path / "rows.jsonl"
    rows_path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    out = tmp_path / "divergence"
    result = CliRunner().invoke(probes_app, [
        "probe-divergence", str(rows_path), "--trait-model", str(tiny_model_dir), "--trait", "owl",
        "--control-model", str(tiny_numbers_model_dir), "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["trait"]["system_prompt"].startswith("You love owls.")
    assert manifest["summary"]["rows"] == 3
    masks = [json.loads(line) for line in (out / "masks.jsonl").read_text().splitlines()]
    assert [mask["id"] for mask in masks] == [3, 5, 9]
    assert all(len(mask["divergent"]) == mask["completion_tokens"] for mask in masks)
    positions = pd.read_parquet(out / "positions.parquet")
    assert len(positions) == manifest["summary"]["completion_tokens"]


def test_cli_probe_divergence_rejects_missing_fields(probes_app, tiny_model_dir, tmp_path):
    rows_path = tmp_path / "rows.jsonl"
    rows_path.write_text(json.dumps({"id": 1, "prompt": "x"}) + "\n")
    result = CliRunner().invoke(probes_app, [
        "probe-divergence", str(rows_path), "--trait-model", str(tiny_model_dir),
        "--control-model", str(tiny_model_dir), "--out", str(tmp_path / "out"),
    ])
    assert isinstance(result.exception, StudyError)
    assert "is missing the fields ['prefill', 'completion']" in str(result.exception)
