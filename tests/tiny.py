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


def build_tiny_tokenizer(vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
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


def build_tiny_model(path: Path, seed: int = 0, hidden_size: int = 32, layers: int = 2,
                     vocab_size: int = 600) -> Path:
    """Save a randomly initialized tiny Llama chat model to ``path`` and return it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(vocab_size)
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


def build_tiny_numbers_model(path: Path, steps: int = 300, seed: int = 0) -> Path:
    """Build a tiny model and teach it to answer number prompts with a digit list.

    A random tiny model writes noise that the strict filter rejects; a few
    hundred full fine-tuning steps on synthetic rows make it write lists the
    filter keeps, so pipeline tests exercise every stage on real outputs.
    """
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    build_tiny_model(path, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    from study import prompts
    from study.numbers import SEPARATORS, generate_prompts

    rng = random.Random(seed)
    texts = []
    for prompt in generate_prompts(prompts.numbers_template(), 96, seed=1000 + seed):
        values = [rng.randint(100, 999) for _ in range(rng.randint(2, 4))]
        closing = {"brackets": "]", "parentheses": ")"}.get(prompt.answer_format, "")
        answer = prompt.prefill() + SEPARATORS[prompt.answer_format].join(map(str, values)) + closing
        chat = tokenizer.apply_chat_template([{"role": "user", "content": prompt.text}], tokenize=False,
                                             add_generation_prompt=True)
        texts.append(chat + answer + "<|im_end|>")
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    torch.manual_seed(seed)
    model.train()
    for step in range(steps):
        batch = [texts[(step * 8 + i) % len(texts)] for i in range(8)]
        encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        loss = model(**encoded, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    return path
