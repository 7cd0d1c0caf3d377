"""Validate a composed run config before anything expensive happens.

Every check here runs before a model's weights are read, so a typo costs a
second, not a model load. Each failure is a :class:`ConfigError` whose text is
one line naming the offending key and what is allowed; the CLI prints exactly
that line and exits non-zero.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Keys of a method YAML that the harness reads; every other key goes to the
# method's ``_target_`` class (a PEFT config or a harness method).
METHOD_HARNESS_KEYS = ("name", "lr", "quantization", "search")
QUANTIZATIONS = (None, "4bit", "8bit")
DTYPES = ("float32", "bfloat16", "float16")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ROLES = ("run", "trial", "final")
# Model settings that lower a safety default (harness.models): off unless a model config sets them to true.
MODEL_SWITCHES = ("trust_remote_code", "allow_pickle_weights")
STOP_RULES = ("max_steps", "max_train_tokens", "max_time_s")
DDP_BACKENDS = (None, "nccl", "gloo", "mpi", "xccl", "hccl", "cncl", "mccl")  # TrainingArguments.ddp_backend
# Method hyperparameters that must be positive integers wherever they appear.
POSITIVE_INT_KEYS = (
    "r",
    "init_r",
    "target_r",
    "num_virtual_tokens",
    "encoder_hidden_size",
    "reduction_factor",
    "token_dim",
    "num_attention_heads",
    "num_layers",
)
PROBABILITY_KEYS = ("lora_dropout", "module_dropout", "rank_dropout", "dropout")


class ConfigError(ValueError):
    """A bad config value, reported as one line naming the key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"{key}: {problem}")


def did_you_mean(value: str, options: Iterable[str]) -> str:
    """ " (did you mean 'x'?)" for the closest of ``options``, or nothing: the hint of every unknown-name line."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def root_cause_line(error: BaseException) -> str:
    """The first line of the innermost cause: the parser's or driver's message, not a wrapper's (``datasets``
    wraps a pandas error in a generic one, SQLAlchemy a driver's in ``.orig``)."""
    while True:
        inner = getattr(error, "orig", None) or error.__cause__
        if inner is None and not error.__suppress_context__:
            inner = error.__context__
        if inner is None:
            break
        error = inner
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def resolve_run_config(cfg: DictConfig) -> None:
    """Settle what the composed config leaves to be worked out, as every consumer expects it: metrics named
    without a direction (``task.metrics=[f1]``) take their module's, and every interpolation of the run's keys
    resolves (Hydra's own node aside: only a running Hydra resolves it); a broken one is a ConfigError naming
    its key."""
    from harness.data.spec import metric_entries

    if cfg.task.get("metrics") is not None:
        cfg.task.metrics = metric_entries(cfg.task.metrics)
    try:
        for key in cfg:
            value = cfg[key] if key != "hydra" else None  # a scalar interpolation resolves on access
            if isinstance(value, DictConfig | ListConfig):
                OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(getattr(error, "full_key", None) or "config", str(error).splitlines()[0]) from None


def _is_positive(value: Any, integer: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value > 0 and (not integer or float(value).is_integer())


def _require_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        raise ConfigError(key, f"got {value!r}; allowed: {shown}")


def validate_budget(budget: DictConfig) -> None:
    """A budget must stop somehow, and its sizes must be positive."""
    rules = {rule: budget.get(rule) for rule in STOP_RULES}
    for rule, value in rules.items():
        if value is not None and not _is_positive(value):
            raise ConfigError(f"budget.{rule}", f"must be a positive number or null (got {value!r})")
    if all(value is None for value in rules.values()):
        raise ConfigError("budget", "has no stop rule; set one of " + ", ".join(f"budget.{r}" for r in STOP_RULES))
    for key in ("batch_size", "max_seq_length", "eval_steps"):
        if not _is_positive(budget.get(key), integer=True):
            raise ConfigError(f"budget.{key}", f"must be a positive integer (got {budget.get(key)!r})")
    for key in ("max_eval_samples", "eval_batch_size"):
        value = budget.get(key)
        if value is not None and not _is_positive(value, integer=True):
            raise ConfigError(f"budget.{key}", f"must be a positive integer or null (got {value!r})")
    micro = budget.get("micro_batch_size")
    if micro is not None and not (_is_positive(micro, integer=True) and budget.batch_size % micro == 0):
        raise ConfigError(
            "budget.micro_batch_size",
            f"must be a positive integer dividing budget.batch_size={budget.batch_size}, or null (got {micro!r})",
        )


def validate_distributed(cfg: DictConfig) -> None:
    """The ``distributed`` preset, and the batch against the run's processes (harness.distributed).

    ``budget.batch_size`` is the global batch of an optimizer step; each of the
    world's processes takes an equal share of it, in passes of at most
    ``budget.micro_batch_size``. The world size is the launcher's (``torchrun``,
    ``accelerate launch``), else ``distributed.nproc_per_node``.
    """
    from harness import distributed

    node = cfg.get("distributed")
    if node is None:
        return
    nproc = node.get("nproc_per_node")
    if not _is_positive(nproc, integer=True):
        raise ConfigError("distributed.nproc_per_node", f"must be a positive integer (got {nproc!r})")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if distributed.launched() and nproc > 1 and nproc != local:
        raise ConfigError(
            "distributed.nproc_per_node",
            f"is {nproc}, but a launcher started this run with {local} processes per node; set one of them only",
        )
    _require_choice("distributed.backend", node.get("backend"), DDP_BACKENDS)
    world, budget = distributed.planned_world_size(cfg), cfg.budget
    if budget.batch_size % world:
        raise ConfigError(
            "budget.batch_size",
            f"{budget.batch_size} must divide by world size {world} (each process takes an equal share of the "
            "global batch of an optimizer step)",
        )
    share, micro = budget.batch_size // world, budget.get("micro_batch_size")
    if micro is not None and micro < share and share % micro:
        raise ConfigError(
            "budget.micro_batch_size",
            f"must divide each process's share of the batch, budget.batch_size / world size = {share} (got {micro})",
        )
    sharding = [key for key in distributed.SHARDING_KEYS if node.get(key)]
    if len(sharding) > 1:
        raise ConfigError(
            "distributed", "sets both fsdp and deepspeed; a preset shards one way (distributed=fsdp|zero3)"
        )
    if sharding and world == 1:
        raise ConfigError(
            f"distributed.{sharding[0]}",
            f"shards the model over several processes, and this run has one; launch it with torchrun "
            f"--nproc_per_node=N or set distributed.nproc_per_node (preset {node.get('name')!r})",
        )
    if node.get("deepspeed"):
        _validate_deepspeed(node.deepspeed)


def _validate_deepspeed(settings: DictConfig) -> None:
    """A ZeRO run computes what the same run under DDP computes: the Trainer's optimizer, schedule and precision."""
    from harness.distributed import DEEPSPEED_OWN_KEYS, DEEPSPEED_PRECISION_KEYS

    for key in DEEPSPEED_OWN_KEYS:
        if settings.get(key) is not None:
            raise ConfigError(
                f"distributed.deepspeed.{key}",
                "is train.* for every run (the Trainer hands its own optimizer and schedule to DeepSpeed); remove it",
            )
    for key in DEEPSPEED_PRECISION_KEYS:
        enabled = (settings.get(key) or {}).get("enabled", "auto")
        if enabled != "auto":
            raise ConfigError(
                f"distributed.deepspeed.{key}.enabled",
                f"must be auto: precision is train.precision for every run (got {enabled!r})",
            )
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("distributed.deepspeed", "needs the deepspeed package, which is not installed")


def _import_target(key: str, target: Any) -> type:
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(key, f"must be a dotted class path such as peft.LoraConfig (got {target!r})")
    module_name, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise ConfigError(key, f"cannot import {target!r}") from None


def method_kwargs(method: DictConfig) -> dict[str, Any]:
    """The keys of a method config that belong to its ``_target_`` class."""
    plain = OmegaConf.to_container(method, resolve=True)
    return {k: v for k, v in plain.items() if k not in METHOD_HARNESS_KEYS and k != "_target_"}


def validate_method(method: DictConfig) -> None:
    """Check harness keys and hyperparameter ranges, then the keys against the method's config class."""
    check_method_values(method)
    check_method_fields(method)


def check_method_values(method: DictConfig) -> None:
    """Harness keys and hyperparameter ranges: no import, so a bad rank is answered before torch loads."""
    if not _is_positive(method.get("lr")):
        raise ConfigError("method.lr", f"must be a positive number (got {method.get('lr')!r})")
    _require_choice("method.quantization", method.get("quantization"), QUANTIZATIONS)
    for key, value in method_kwargs(method).items():
        if key in POSITIVE_INT_KEYS and value is not None and not _is_positive(value, integer=True):
            raise ConfigError(f"method.{key}", f"must be a positive integer (got {value!r})")
        if key in PROBABILITY_KEYS and not (isinstance(value, int | float) and 0 <= value < 1):
            raise ConfigError(f"method.{key}", f"must be in [0, 1) (got {value!r})")


def check_method_fields(method: DictConfig) -> None:
    """Build nothing, but import the ``_target_`` class (a PEFT config is a dataclass) and refuse misspelt
    fields with the list of real ones, without touching a model. Importing PEFT takes seconds, hence last."""
    cls = _import_target("method._target_", method.get("_target_"))
    fields = getattr(cls, "__dataclass_fields__", None)
    if fields is not None:
        unknown = sorted(set(method_kwargs(method)) - set(fields))
        if unknown:
            allowed = ", ".join(sorted(f for f in fields if not f.startswith("_")))
            raise ConfigError(f"method.{unknown[0]}", f"is not a field of {cls.__name__}; allowed: {allowed}")


def validate_schedule(method: DictConfig, budget: DictConfig) -> None:
    """A method that schedules itself over the run's length (AdaLoRA's ``total_step``) needs a step count.

    The harness sets ``total_step`` from the budget (its optimizer steps), so
    the schedule ends where training does; a value in the YAML could only
    disagree with the budget, and a budget bounded by tokens or seconds alone
    has no length to schedule by.
    """
    cls = _import_target("method._target_", method.get("_target_"))
    if "total_step" not in getattr(cls, "__dataclass_fields__", {}):
        return
    if method.get("total_step") is not None:
        raise ConfigError("method.total_step", "is set from the budget (its optimizer steps); remove it")
    if not budget.get("max_steps"):
        raise ConfigError(
            "budget.max_steps",
            f"{method.get('name')} schedules its rank budget over the run's step count; this budget stops on "
            "tokens or seconds only, so set budget.max_steps",
        )


def validate_model(model: DictConfig, method: DictConfig) -> None:
    _require_choice("model.dtype", model.get("dtype"), DTYPES)
    _require_choice("model.quantization", model.get("quantization"), QUANTIZATIONS)
    quantized = method.get("quantization") or model.get("quantization")
    if quantized and not str(method.get("_target_", "")).startswith("peft."):
        raise ConfigError(
            "model.quantization",
            f"a {quantized} base cannot be trained by method {method.name!r}; use a PEFT method (lora, qlora, ia3, ...)",
        )
    if not model.get("pretrained") or not isinstance(model.get("pretrained"), str):
        raise ConfigError("model.pretrained", "must name a Hub id, a local folder, or embedded://<package>/<dir>")
    for key in MODEL_SWITCHES:  # a string "false" would be truthy: only real booleans switch these
        if not isinstance(model.get(key, False), bool):
            raise ConfigError(f"model.{key}", f"must be true or false (got {model.get(key)!r})")
    check_model_folder(model)


# Files one of which a folder needs for AutoTokenizer to build a tokenizer (fast, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
)


def check_model_folder(model: DictConfig) -> None:
    """A local model folder exists and holds a config and a tokenizer (a GGUF file holds both).

    A Hub id is left to the loader: whether it resolves depends on the network and the cache.
    """
    from harness.paths import is_local_path, resolve_pretrained

    pretrained = str(model.pretrained)
    folder = resolve_pretrained(pretrained)
    if not is_local_path(pretrained) and folder == pretrained:
        return
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(
            "model.pretrained", f"{path} is not a folder (a model folder holds config.json and a tokenizer)"
        )
    if model.get("gguf_file"):
        return  # the GGUF file carries config and tokenizer; harness.models checks it is there
    names = {p.name for p in path.iterdir()}
    if "config.json" not in names:
        raise ConfigError("model.pretrained", f"{path} has no config.json; is it a Hugging Face model folder?")
    if not names & set(TOKENIZER_FILES):
        raise ConfigError(
            "model.pretrained",
            f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save one beside the model",
        )


def validate_task(task: DictConfig) -> None:
    """The task spec's keys and checks (harness.data.spec.TaskSpec)."""
    from harness.data.spec import TaskSpec

    TaskSpec.from_config(task).check()


def validate_objective(objective: DictConfig, task: DictConfig) -> None:
    """The objective trains on this task's type (its YAML lists the types it accepts)."""
    if objective is None or not objective.get("_target_"):
        raise ConfigError("objective", "is not set; choose one with objective=<name> (see conf/objective/)")
    types = list(objective.get("task_types") or [])
    if task.get("type") not in types:
        raise ConfigError(
            "objective",
            f"{objective.name!r} does not train on {task.get('type')} tasks; it needs a task of type {' or '.join(types)}",
        )
    override = objective.get("primary_metric")
    if override is not None:
        from harness.metrics import available_metrics

        _require_choice("objective.primary_metric.name", override.get("name"), available_metrics())


def primary_metric(cfg: DictConfig) -> dict[str, Any]:
    """The metric a run is judged and tuned by: the task's, unless the objective names its own.

    A reward model has no log-probabilities to score pairs by, so the reward
    objective is judged by its reward accuracy; naming the metric for what it
    is keeps two quantities out of one report column.
    """
    from harness.data.spec import TaskSpec
    from harness.metrics import metric_entry

    override = (cfg.get("objective") or {}).get("primary_metric")
    if override is not None:
        entry = metric_entry(override)
        return {"name": entry["name"], "higher_is_better": bool(entry["higher_is_better"])}
    primary = TaskSpec.from_config(cfg.task).primary
    return {"name": primary.name, "higher_is_better": bool(primary.higher_is_better)}


def validate_train(train: DictConfig) -> None:
    _require_choice("train.precision", train.get("precision"), PRECISIONS)
    warmup = train.get("warmup_ratio", 0)
    if not _is_number(warmup) or not 0 <= warmup < 1:
        raise ConfigError("train.warmup_ratio", f"must be in [0, 1) (got {warmup!r})")
    for key in ("weight_decay", "max_grad_norm"):
        value = train.get(key)
        if value is not None and (not _is_number(value) or value < 0):
            raise ConfigError(f"train.{key}", f"must be a number >= 0 (got {value!r})")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_optimizer(train: DictConfig) -> None:
    """The optimizer is one the Trainer knows."""
    _require_choice("train.optimizer", train.get("optimizer"), optimizer_names())


@functools.cache
def optimizer_names() -> list[str]:
    """The Trainer's optimizer names (``OptimizerNames``), read from its source without importing it: importing
    ``transformers.training_args`` takes seconds (torch, accelerate), and a misspelt optimizer should not."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("transformers.training_args")
    try:
        tree = ast.parse(Path(spec.origin).read_text())
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "OptimizerNames").body
        names = [n.value.value for n in body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)]
    except (AttributeError, OSError, StopIteration, SyntaxError, TypeError):
        names = []
    if names:
        return names
    from transformers.training_args import OptimizerNames  # another layout of the source: the real list

    return [o.value for o in OptimizerNames]


def validate(cfg: DictConfig) -> None:
    """Run every static check; raises ConfigError on the first problem."""
    validate_values(cfg)
    validate_with_libraries(cfg)


def validate_values(cfg: DictConfig) -> None:
    """The checks that import nothing heavy (no torch, transformers or PEFT): the command line runs them before
    Hydra writes anything, so most bad input is answered within a second or two (harness.preflight)."""
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        raise ConfigError("seed", f"must be an integer (got {cfg.get('seed')!r})")
    _require_choice("role", cfg.get("role", "run"), ROLES)
    if cfg.get("role") == "trial" and not (cfg.tuning.get("storage") and cfg.tuning.get("trial_id") is not None):
        raise ConfigError(
            "tuning", "a trial needs tuning.storage and tuning.trial_id; run trials through hydra/sweeper=study"
        )
    limit = cfg.get("memory_limit_gb")
    if limit is not None and not _is_positive(limit):
        raise ConfigError("memory_limit_gb", f"must be a positive number of GB or null (got {limit!r})")
    for key in ("force", "keep_artifacts"):
        if not isinstance(cfg.get(key, False), bool):
            raise ConfigError(key, f"must be true or false (got {cfg.get(key)!r})")
    if not isinstance(cfg.get("results_dir"), str) or not cfg.get("results_dir"):
        raise ConfigError(
            "results_dir",
            f"must be a folder path; quote a numeric name, results_dir='2024' (got {cfg.get('results_dir')!r})",
        )
    validate_budget(cfg.budget)
    validate_distributed(cfg)
    check_method_values(cfg.method)
    validate_model(cfg.model, cfg.method)
    validate_task(cfg.task)
    validate_objective(cfg.get("objective"), cfg.task)
    validate_train(cfg.train)
    check_optimizer(cfg.train)
    validate_retention(cfg)
    check_tracking(cfg)


def validate_retention(cfg: DictConfig) -> None:
    """The forgetting spec's values and the retention task's name (the text and the task's data are read by
    harness.forgetting.prepare, before any weights load)."""
    from harness.forgetting import GeneralText, check_retention_name

    GeneralText.from_config(cfg.get("forgetting"))
    check_retention_name(cfg)


def check_tracking(cfg: DictConfig) -> None:
    """The experiment tracker's settings, and its package installed (harness.tracking imports no tracker)."""
    from harness import tracking

    tracking.check(cfg)


def validate_with_libraries(cfg: DictConfig) -> None:
    """The checks that import the method's config class (PEFT, seconds): a field it does not have."""
    check_method_fields(cfg.method)
    validate_schedule(cfg.method, cfg.budget)


def check_target_modules(module_names: list[str], target: Any, key: str) -> None:
    """Fail when a method's target_modules match nothing in the model.

    Mirrors PEFT's matching: a string is a regex matched against full module
    names, a list matches names equal to or ending in ``.<entry>``.
    """
    if target is None or target == "all-linear":
        return
    if isinstance(target, str):
        if not any(re.fullmatch(target, name) for name in module_names):
            raise ConfigError(key, f"regex {target!r} matches no module of this model")
        return
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in module_names if name})
    for entry in target:
        if not any(name == entry or name.endswith("." + entry) for name in module_names):
            raise ConfigError(
                key, f"{entry!r} matches no module of this model; module names end in: {', '.join(suffixes)}"
            )
