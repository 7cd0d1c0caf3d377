"""Method stage: turn a loaded model into the thing a method trains.

A method YAML's ``_target_`` is either a PEFT config class (PEFT does the
wrapping) or one of the small harness methods below (full, head, bitfit) or
:class:`harness.adapters.BottleneckAdapterConfig`. The harness methods share
one protocol, ``apply(model, context) -> model``, so a new non-PEFT method is
one class plus one YAML file. In every method the classification head trains.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig
from torch import nn
from transformers import TrainerCallback

from harness.compat import expose_legacy_cache_kwarg
from harness.config import ConfigError, method_kwargs


@dataclass
class MethodContext:
    """What a method needs to know about the model and the run."""

    head_modules: list[str]
    adapter_sites: dict[str, str] = field(default_factory=dict)
    peft_task_type: str = "SEQ_CLS"
    total_steps: int | None = None  # optimizer steps the budget allows (None: bounded by tokens or seconds only)
    quantized: bool = False

    def unfreeze_head(self, model: nn.Module) -> None:
        for name, module in model.named_modules():
            if name.rpartition(".")[2] in self.head_modules:
                module.requires_grad_(True)


class FullFineTuning:
    """Every parameter trains."""

    def apply(self, model: nn.Module, context: MethodContext) -> nn.Module:
        model.requires_grad_(True)
        return model


class HeadOnly:
    """Only the classification head trains (a linear probe of the encoder)."""

    def apply(self, model: nn.Module, context: MethodContext) -> nn.Module:
        model.requires_grad_(False)
        context.unfreeze_head(model)
        return model


class BitFit:
    """Bias terms and the head train (Ben Zaken et al., 2022)."""

    def apply(self, model: nn.Module, context: MethodContext) -> nn.Module:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.endswith(".bias"))
        context.unfreeze_head(model)
        return model


def method_context(cfg: DictConfig, objective: Any, quantized: bool) -> MethodContext:
    """What the method needs to know about this run's model and objective (the head a scorer trains, where
    bottleneck adapters go, PEFT's task type, the optimizer steps): one home, so that a kept run is rebuilt
    (harness.export) exactly as it was trained."""
    from omegaconf import OmegaConf

    sites = cfg.model.get("adapter_sites")
    return MethodContext(
        head_modules=list(cfg.model.head_modules) if objective.head == "sequence_classification" else [],
        peft_task_type=objective.peft_task_type,
        adapter_sites=OmegaConf.to_container(sites) if sites is not None else {},
        total_steps=objective.optimizer_steps(cfg.budget),
        quantized=quantized,
    )


def build_method(method: DictConfig, context: MethodContext) -> Any:
    """The method's config object (a PEFT config or a harness method).

    A schedule-aware method (AdaLoRA's ``total_step``) gets the run's number
    of optimizer steps (``config.validate_schedule`` has checked there is one).
    """
    cls = get_class(method._target_)
    kwargs = method_kwargs(method)
    if "total_step" in getattr(cls, "__dataclass_fields__", {}):
        kwargs["total_step"] = context.total_steps
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError("method", f"{method.name}: {str(error).splitlines()[0]}") from None


def is_peft(method_object: Any) -> bool:
    from peft import PeftConfig

    return isinstance(method_object, PeftConfig)


def is_peft_model(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merges_into_base(method_object: Any) -> bool:
    """Whether what the method trained can be folded into the base model's own weights, leaving a plain
    transformers model: PEFT's tuners can (LoRA and its family, IA3, VeRA, LN tuning: ``merge_and_unload``),
    its prompt-learning methods cannot (prefix, prompt, p-tuning add virtual tokens, not weights); full, head
    and BitFit train the base's own tensors; a bottleneck adapter is a new nonlinear module (``merges_into_base``
    on its config class)."""
    if is_peft(method_object):
        return not method_object.is_prompt_learning
    return getattr(method_object, "merges_into_base", True)


def check_method(method_object: Any, context: MethodContext) -> None:
    """Run the method's own config checks (those that need no model); they raise ConfigError."""
    if hasattr(method_object, "check"):
        method_object.check(context)


def check_trains_something(architecture: nn.Module, method_object: Any, context: MethodContext, name: str) -> None:
    """A harness method applied to the weightless skeleton must leave something trainable.

    BitFit on a model without bias terms (Llama) or a head-only probe under an
    objective without a new head (SFT) would otherwise fail at the first
    backward pass, after the weights were loaded.
    """
    if is_peft(method_object):
        return
    method_object.apply(architecture, context)
    if not any(p.requires_grad for p in architecture.parameters()):
        raise ConfigError(
            "method", f"{name} leaves nothing to train in this model with this objective (no bias terms or no new head)"
        )


def _peft_config_for_run(config: Any, context: MethodContext) -> Any:
    """Fill in what PEFT needs from the run: the task type and the head to train."""
    if getattr(config, "task_type", None) is None:
        config.task_type = context.peft_task_type
    if hasattr(config, "modules_to_save") and config.modules_to_save is None:
        config.modules_to_save = list(context.head_modules)
    return config


def apply_method(model: nn.Module, method_object: Any, context: MethodContext) -> nn.Module:
    """Wrap or freeze the model as the method prescribes."""
    if not is_peft(method_object):
        return method_object.apply(model, context)
    from peft import get_peft_model, prepare_model_for_kbit_training

    config = _peft_config_for_run(method_object, context)
    if context.quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if config.is_prompt_learning:
        expose_legacy_cache_kwarg(model)
    return get_peft_model(model, config)


def adalora_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The AdaLoRA tuners inside a model (PPO holds two: policy and value model), by module path."""
    from peft.tuners.adalora import AdaLoraModel

    return [(name, module) for name, module in model.named_modules() if isinstance(module, AdaLoraModel)]


@contextmanager
def task_loss_only(model: nn.Module):
    """Evaluate on the task's loss alone: PEFT adds AdaLoRA's orthogonal penalty to ``outputs.loss`` on every
    forward, evaluation included, so a recorded evaluation loss would otherwise mix in a regulariser."""
    configs = [tuner.peft_config[tuner.trainable_adapter_name] for _, tuner in adalora_models(model)]
    weights = [config.orth_reg_weight for config in configs]
    for config in configs:
        config.orth_reg_weight = 0.0
    try:
        yield
    finally:
        for config, weight in zip(configs, weights, strict=True):
            config.orth_reg_weight = weight


class RankAllocation(TrainerCallback):
    """AdaLoRA's rank reallocation, run after every optimizer step (a Trainer callback).

    PEFT leaves ``update_and_allocate`` to the training loop: it must run after
    ``optimizer.step()`` and before gradients are zeroed (it scores each
    singular triplet by weight × gradient), with the index of the optimizer
    step. Without it AdaLoRA is LoRA at ``init_r`` plus an orthogonality
    penalty. ``on_optimizer_step`` is the Trainer's hook at exactly that
    point; PPO's own loop calls it too. The step is counted here, since a
    budget step of PPO holds several optimizer steps.
    """

    def __init__(self):
        self.optimizer_steps = 0

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        for _, tuner in adalora_models(model):
            tuner.update_and_allocate(self.optimizer_steps)
        self.optimizer_steps += 1
        return control


def method_callbacks(model: nn.Module) -> list[Any]:
    """Trainer callbacks a method needs while training (AdaLoRA's rank allocation)."""
    return [RankAllocation()] if adalora_models(model) else []


def rank_allocation(
    model: nn.Module, optimizer_steps: int | None = None, loss_from_model: bool = True
) -> dict[str, Any] | None:
    """AdaLoRA's final rank per adapted module, as its allocator last set it (PEFT's ``rank_pattern``).

    The record lists it with the schedule it followed and whether training ran
    to the schedule's end (a token or time stop can cut it short), so a reader
    sees that the budget was reallocated and where it went. PEFT adds AdaLoRA's
    orthogonality penalty to the model's own loss; objectives that compute
    their own loss from the logits (DPO, reward, PPO, RLOO, GRPO) train without
    it, and the record says which.
    """
    tuners = adalora_models(model)
    if not tuners:
        return None
    ranks: dict[str, int] = {}
    schedule: dict[str, Any] = {}
    for path, tuner in tuners:
        adapter = tuner.trainable_adapter_name
        config = tuner.peft_config[adapter]
        pattern = config.rank_pattern or {}
        owner = path.removesuffix("base_model").rstrip(".")  # "" for a PEFT model, "policy"/"value" inside PPO's pair
        suffix = f".lora_E.{adapter}"
        for name, parameter in tuner.named_parameters():
            if not name.endswith(suffix):
                continue
            inner = name.removeprefix("model.")  # the allocator names parameters within the tuner's model
            module = ".".join(p for p in (owner, inner[: -len(suffix)]) if p)
            mask = pattern.get(inner, pattern.get(inner.replace(f".{adapter}", "")))
            ranks[module] = int(sum(mask)) if mask is not None else int(parameter.shape[0])
        schedule = {k: getattr(config, k) for k in ("init_r", "target_r", "tinit", "tfinal", "deltaT", "total_step")}
    return {
        **schedule,
        "optimizer_steps": optimizer_steps,
        "schedule_completed": optimizer_steps is not None and optimizer_steps >= schedule["total_step"],
        "orthogonal_penalty": "in the model's loss (PEFT)"
        if loss_from_model
        else "absent: the objective computes its own loss",
        "modules": len(ranks),
        "initial_rank_budget": schedule["init_r"] * len(ranks),
        "target_rank_budget": schedule["target_r"] * len(ranks),
        "final_rank_budget": sum(ranks.values()),
        "ranks": ranks,
    }
