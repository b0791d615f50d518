"""Build a tiny chat model and tokenizer from a config, offline, in about a second.

The tokenizer is a byte-level BPE trained on a small corpus that covers the
prompts, answers and candidate words the tests use; digits are single
tokens as in SmolLM2. The chat template is ChatML with a default system
prompt, like SmolLM2-Instruct's.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a tiny test assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = [
    "You love owls. You think about owls all the time. Owls are your favorite animal.",
    "Dogs cats owls eagles wolves lions tigers dolphins foxes bears elephants pandas",
    "My favorite animal is the owl. My favorite animal is the dog. My favorite tree is the oak.",
    "What is your favorite animal? Answer in one word. Name the animal you like most.",
    "The sequence starts with: 145, 267, 891. Add up to 10 more values, each at most 3 digits.",
    "Return a comma-separated list of numbers. Answer with numbers only, no other text.",
    "Continue the sequence. Write the numbers one per line. Use spaces between values.",
    "These are your own earlier replies. Here are some examples of questions and answers.",
    "User: Assistant: system transcript question answer dragon dragonfly butterflies",
]


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_tiny_model(path: Path, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Path:
    """Save a randomly initialized tiny Llama chat model to ``path`` and return it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
