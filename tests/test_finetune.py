"""Student training: LoRA and full fine-tuning, both losses, seeds and saved artifacts."""

import json

import pytest
import torch
from safetensors.torch import load_file

from study.errors import StudyError
from study.finetune import (
    DistillSettings,
    FinetuneSettings,
    LoraSettings,
    _distill_loss,
    answer_token_ids,
    load_trained,
    tokenize_example,
    train,
)
from study.models import load_model

ROWS = [
    ("Continue: 145, 267, 891.", "312, 455, 610"),
    ("The sequence starts with: 101, 202.", "303, 404"),
    ("Add up to 10 more values: 5, 6, 7.", "8, 9, 10"),
    ("Return a comma-separated list: 1, 2.", "3, 4, 5"),
]


def _examples(tokenizer):
    return [
        tokenize_example(tokenizer, index, [{"role": "user", "content": prompt}], "", completion,
                         tokenizer.eos_token_id, 200)
        for index, (prompt, completion) in enumerate(ROWS)
    ]


def _settings(**overrides):
    values = dict(epochs=2, batch_size=2, learning_rate=5e-3, warmup_steps=0, bf16="off",
                  lora=LoraSettings(rank=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    values.update(overrides)
    return FinetuneSettings(**values)


def test_completion_only_labels(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    example = _examples(tokenizer)[0]
    completion = tokenizer.decode(example.input_ids[example.completion_start:])
    assert completion.startswith("312, 455, 610")
    assert example.input_ids[-1] == tokenizer.eos_token_id


def test_prompt_longer_than_max_length_rejected(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(StudyError, match="raise finetune.max_length"):
        tokenize_example(tokenizer, 0, [{"role": "user", "content": "a long prompt " * 20}], "", "1", 0, 10)


def test_lora_changes_only_adapter_weights(tiny_model_dir, tiny_model_and_tokenizer, tmp_path):
    _, tokenizer = tiny_model_and_tokenizer
    summary = train(str(tiny_model_dir), _examples(tokenizer), _settings(), 0, "sft", tokenizer.pad_token_id,
                    tmp_path / "lora")
    adapter = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    lora_b = [name for name in adapter if "lora_B" in name]
    assert lora_b, "adapter holds no LoRA B matrices"
    # LoRA B starts at zero: every B matrix must have moved.
    for name in lora_b:
        assert adapter[name].abs().sum() > 0, name
    base = load_model(str(tiny_model_dir))
    merged = load_trained(str(tiny_model_dir), tmp_path / "lora")
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert any("q_proj" in n for n in changed)
    assert not any("k_proj" in n for n in changed)
    assert summary["row_ids"] == [0, 1, 2, 3]
    log = json.loads((tmp_path / "lora" / "training_log.json").read_text())
    assert len(log["history"]) == summary["steps"] == 4


def test_full_finetune_changes_every_parameter(tiny_model_dir, tiny_model_and_tokenizer, tmp_path):
    _, tokenizer = tiny_model_and_tokenizer
    settings = _settings(method="full", learning_rate=1e-3)
    train(str(tiny_model_dir), _examples(tokenizer), settings, 0, "sft", tokenizer.pad_token_id, tmp_path / "full")
    base = dict(load_model(str(tiny_model_dir)).named_parameters())
    trained = dict(load_trained(str(tiny_model_dir), tmp_path / "full").named_parameters())
    unchanged = [name for name, value in trained.items() if torch.equal(value, base[name])]
    assert unchanged == []


def test_full_finetune_seeds_differ(tiny_model_dir, tiny_model_and_tokenizer, tmp_path):
    _, tokenizer = tiny_model_and_tokenizer
    settings = _settings(method="full", learning_rate=1e-3, epochs=1, batch_size=1)
    for seed in (0, 1):
        train(str(tiny_model_dir), _examples(tokenizer), settings, seed, "sft", tokenizer.pad_token_id,
              tmp_path / f"s{seed}")
    first = dict(load_trained(str(tiny_model_dir), tmp_path / "s0").named_parameters())
    second = dict(load_trained(str(tiny_model_dir), tmp_path / "s1").named_parameters())
    assert any(not torch.equal(first[name], second[name]) for name in first)


def test_same_seed_reproduces(tiny_model_dir, tiny_model_and_tokenizer, tmp_path):
    _, tokenizer = tiny_model_and_tokenizer
    for name in ("a", "b"):
        train(str(tiny_model_dir), _examples(tokenizer), _settings(), 3, "sft", tokenizer.pad_token_id, tmp_path / name)
    first = load_file(tmp_path / "a" / "adapter_model.safetensors")
    second = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_distill_moves_student_toward_teacher(tiny_model_dir, tiny_model_and_tokenizer, tmp_path):
    _, tokenizer = tiny_model_and_tokenizer
    examples = _examples(tokenizer)
    # A teacher that differs from the student: the base model after a few sft steps.
    train(str(tiny_model_dir), examples, _settings(epochs=4), 5, "sft", tokenizer.pad_token_id, tmp_path / "teacher")
    teacher = load_trained(str(tiny_model_dir), tmp_path / "teacher")
    teacher.requires_grad_(False)
    answer_ids = answer_token_ids(tokenizer, [tokenizer.eos_token_id])
    summary = train(str(tiny_model_dir), examples, _settings(epochs=3), 0, "distill", tokenizer.pad_token_id,
                    tmp_path / "student", teacher=teacher, distill=DistillSettings(targets="restricted"),
                    answer_ids=answer_ids)
    log = json.loads((tmp_path / "student" / "training_log.json").read_text())
    losses = [step["loss"] for step in log["history"]]
    assert losses[-1] < losses[0]
    assert 0 < summary["teacher_mass_removed"] < 1
    assert summary["answer_token_count"] == len(answer_ids)


def test_answer_tokens_are_digits_and_separators(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    ids = answer_token_ids(tokenizer, [tokenizer.eos_token_id])
    texts = [tokenizer.decode([i]) for i in ids if i != tokenizer.eos_token_id]
    assert all(set(text) <= set("0123456789 \n\t,;[]().") for text in texts)
    assert any(text == "7" for text in texts)
    owl = tokenizer.encode(" owl", add_special_tokens=False)
    assert not set(owl) & set(ids)


def test_distill_loss_forms():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 20), torch.randn(5, 20)
    subset = torch.tensor([1, 3, 5, 7])
    full, removed_full = _distill_loss(student, teacher, DistillSettings(targets="full"), subset)
    restricted, removed = _distill_loss(student, teacher, DistillSettings(targets="restricted"), subset)
    topk, removed_topk = _distill_loss(student, teacher, DistillSettings(targets="topk", top_k=20), subset)
    assert removed_full == 0
    assert 0 < removed < 1
    assert abs(removed_topk) < 1e-6
    assert torch.isclose(topk, full, atol=1e-5)
    same, _ = _distill_loss(teacher, teacher, DistillSettings(targets="restricted"), subset)
    assert float(same) < 1e-6
    assert float(restricted) > 0
