"""Library-version shims: each works around one behaviour of a pinned-range library, says which, and why.

Kept in one place so that a library upgrade means reading one file to see
what may be dropped. Each function names the library version it was written
against and when it can go; tests/test_compat.py holds, for each, a test that
the library still behaves that way (it fails once an upgrade makes the shim
unnecessary, or breaks it) and a test that the shim works. constraints.txt
pins the versions those tests last passed with.

Every import of a library's private module or attribute goes through here;
the study sweeper (hydra_plugins/harness_study_sweeper) imports this module
lazily, inside its methods, because Hydra imports every plugin at start-up.
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn


def keep_4bit_weights_trainable_on_cpu(model: nn.Module) -> nn.Module:
    """Stop bitsandbytes (0.50) from repacking 4-bit weights for CPU inference.

    On a CPU with AVX512-BF16, ``Linear4bit.forward`` in eval mode converts its
    weight once, for good, to an inference-only layout; the next training
    forward then fails ("a view of a leaf Variable ... in-place operation") or
    passes no gradient back through the layer.
    A run evaluates at step 0 and then trains, so QLoRA on such a CPU always
    failed. Turning the repacking off keeps the one layout that trains; the
    arithmetic is the same. It can go once bitsandbytes unpacks the weight
    again when the layer trains.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def unload_leftover_wrappers(model: nn.Module) -> nn.Module:
    """Finish what PEFT (0.21) LN tuning's ``merge_and_unload`` leaves undone: the ``modules_to_save`` wrappers.

    LN tuning's own unload loop replaces the tuned layer norms and skips every other PEFT wrapper, so a
    scorer's trained head stays wrapped (``classifier.modules_to_save.default``); ``save_pretrained`` then
    writes the wrapper's tensor names, which transformers does not load, and the merged model comes back with
    a fresh random head. Each wrapper left is replaced by what PEFT's other tuners put in its place
    (``unload_and_optionally_merge_module``: the trained copy). A model without one is left alone. It can go
    once LN tuning unloads them itself.
    """
    from peft.utils.other import AuxiliaryTrainingWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, AuxiliaryTrainingWrapper):
            parent, _, child = name.rpartition(".")
            unloaded = module.unload_and_optionally_merge_module(merge=True, safe_merge=True, adapter_names=None)
            setattr(model.get_submodule(parent), child, unloaded)
    return model


def is_4bit_parameter(parameter: torch.Tensor) -> bool:
    """Whether ``parameter`` is a bitsandbytes (0.50) 4-bit weight, which packs two values per byte of storage.

    ``numel()`` of such a weight counts its storage, not its values; PEFT
    (0.21, ``get_nb_trainable_parameters``) recognises it by the class name
    ``Params4bit`` and counts ``numel() * 2 * element_size()`` values, and the
    harness counts the same way. This is the isinstance check, without
    importing bitsandbytes (seconds, and a console warning) in runs that never
    loaded it: a 4-bit weight exists only once bitsandbytes is imported. It
    can go if bitsandbytes reports logical sizes itself.
    """
    bitsandbytes = sys.modules.get("bitsandbytes")
    return bitsandbytes is not None and isinstance(parameter, bitsandbytes.nn.Params4bit)


def expose_legacy_cache_kwarg(model: nn.Module) -> None:
    """Let PEFT (0.21) prefix tuning reach encoders under transformers >= 5 (written against 5.24).

    transformers 5 renamed the ``past_key_values`` argument of encoder
    backbones to ``cache`` (the old name still works through a deprecation
    shim, announced for removal in 5.40), but PEFT 0.21 looks for the old name
    in the forward signature and refuses prefix tuning ("Model does not
    support past key values"). This gives the backbone instance a forward whose
    signature has the old name and that passes it on as ``cache``. A backbone
    whose signature has the old name, or no cache at all, is left alone. It can
    go once PEFT accepts ``cache``.
    """
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if backbone is None:
        return
    parameters = inspect.signature(backbone.forward).parameters
    if "past_key_values" in parameters or "cache" not in parameters:
        return
    original = backbone.forward

    @functools.wraps(original)
    def forward(*args, past_key_values=None, **kwargs):
        if past_key_values is not None:  # a decoder's own cache (generation) already arrives as ``cache``
            kwargs["cache"] = past_key_values
        return original(*args, **kwargs)

    signature = [*parameters.values()]
    legacy = inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None)
    has_var_keyword = signature and signature[-1].kind is inspect.Parameter.VAR_KEYWORD
    signature.insert(len(signature) - 1 if has_var_keyword else len(signature), legacy)
    forward.__signature__ = inspect.signature(original).replace(parameters=signature)
    backbone.forward = forward


def forget_gguf_quantization(model: nn.Module) -> nn.Module:
    """Make a model loaded from a GGUF file savable, once its weights are plain float tensors (transformers 5.24).

    Without the ``kernels`` package (or with a file of float tensors)
    transformers dequantises every GGUF weight at load time, but the model
    keeps its ``GgufHfQuantizer`` and ``quantization_config``, and
    ``save_pretrained`` refuses it ("quantized with gguf and is not
    serializable"). Dropping both saves it as the ordinary model it is. (With
    ``kernels`` installed the weights would stay in GGUF blocks: then this copy
    would be wrong, so the harness does not install it.) It can go once
    transformers saves a dequantised GGUF model.
    """
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    return model


def pin_trl_reference(model: nn.Module, beta: float, folder: Path) -> None:
    """Make TRL's (1.16) RLOO and GRPO trainers take the model's own starting weights as their KL reference.

    With ``beta > 0`` and a model that is not a PEFT model, TRL builds the
    reference by loading ``model.config._name_or_path`` again
    (``create_model_from_path(get_config_model_id(config))``), not by copying
    the model it was given. A model drawn at random (tests), or one a
    non-PEFT method changed (bottleneck adapters), would get other weights, or
    none. The starting weights are saved to ``folder`` once and the config
    points there. (A PEFT model's reference is the model without its adapter;
    ``beta == 0`` needs none.) It can go once TRL accepts a reference model or
    copies the one it trains.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel) or not beta:
        return
    model.save_pretrained(folder)
    model.config._name_or_path = str(folder)


@contextmanager
def use_adapter(model: nn.Module, adapter_name: str | None):
    """TRL's (1.16) ``use_adapter``: the named PEFT adapter active for the duration (None: every adapter off).

    It exists only in ``trl.trainer.utils``, outside TRL's public API; this is
    the one place that imports it. It can go (imported from ``trl``) once TRL
    exports it.
    """
    from trl.trainer.utils import use_adapter as trl_use_adapter

    with trl_use_adapter(model, adapter_name=adapter_name):
        yield model


def disable_dropout(model: nn.Module) -> None:
    """TRL's (1.16) ``disable_dropout_in_model``: every ``nn.Dropout`` of the model set to p = 0.

    Exported by ``trl.trainer`` (not by ``trl``) from ``trl.trainer.utils``;
    TRL's own trainers call it, so PPO's loop uses the same. It can go
    (imported from ``trl``) once TRL exports it.
    """
    from trl.trainer.utils import disable_dropout_in_model

    disable_dropout_in_model(model)


def merge_into_evaluation_log(logs: dict[str, float], metrics: dict[str, float], seconds: float) -> None:
    """From a ``Trainer.log`` override: add ``metrics`` to an evaluation's log and charge it ``seconds`` more runtime.

    transformers' (5.24) ``Trainer.evaluate`` has no hook for metrics computed
    from the model itself (``compute_metrics`` sees predictions only), but it
    passes one dict, with its ``<prefix>_runtime``, to ``self.log``, then to the
    callbacks' ``on_evaluate`` (the study's pruner) and returns that same dict.
    Updating it in place inside ``log`` therefore puts the metrics in the log
    history, the callbacks and the return value at once. A log without a
    runtime (a training log) is left alone. It can go once transformers offers
    such a hook; it breaks if ``evaluate`` stops passing that one dict on.
    """
    runtime = next((key for key in logs if key.endswith("_runtime")), None)
    if runtime is None:
        return
    logs.update(metrics)  # in place: evaluate() returns this same dict
    logs[runtime] += seconds  # the extra metrics' time is evaluation time, not training time


def hide_transformers_deprecations() -> None:
    """Hide the FutureWarnings transformers (5.24) raises when PEFT (0.21) calls an API it deprecates.

    PEFT reads ``model.is_gradient_checkpointing`` (renamed
    ``is_activation_checkpointing``, the old name to be removed in transformers 6)
    on every ``get_peft_model``; the warning is not actionable by a user. It can
    go once PEFT uses the new names.
    """
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")


def cross_sweep_overrides(overrides: list[Any]) -> list[list[str]]:
    """Hydra's (1.3) cross product of parsed overrides: one ``key=value`` list per combination of swept values.

    ``method=lora,ia3 task=sst2,rte lr=0.1`` gives four lists, in Hydra's own
    order (the first key varies slowest). Hydra computes this only in its basic
    sweeper, ``hydra._internal.core_plugins.basic_sweeper.BasicSweeper.split_arguments``,
    outside its public API; this is the one place that imports it. Only
    discrete sweeps (``a,b``, ``choice``, ``range``) expand; another sweep type
    raises Hydra's own error. It can go once Hydra exposes the expansion
    publicly; it breaks if Hydra 1.4 moves or changes the basic sweeper.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    (cells,) = BasicSweeper.split_arguments(overrides, None)  # one batch: no maximum batch size
    return [list(cell) for cell in cells]


def trial_id(trial: Any) -> int:
    """An Optuna (5.0) trial's id in its storage, which a worker needs to report to that very trial.

    Optuna identifies a trial in its storage by this id (not by its number),
    and ``optuna.trial.Trial(study, trial_id)`` is how a worker in another
    process reattaches to it; but ``Trial`` and ``FrozenTrial`` expose it only
    as the private attribute ``_trial_id``. It can go once Optuna exposes the
    id publicly (a ``trial_id`` attribute).
    """
    return trial._trial_id


@contextmanager
def mlflow_scope(tracking_uri: str):
    """mlflow's (3.17) process-wide tracking URI set to ``tracking_uri`` and no active experiment for the block,
    then both as they were, with the variables mlflow mirrors them into (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_ID).

    mlflow's fluent API (``start_run``, ``log_metrics``: what transformers' MLflowCallback logs with) reads module
    globals that ``mlflow.set_tracking_uri`` and ``mlflow.set_experiment`` set, and both also write their
    variable into os.environ; optuna-integration's (5.0) MLflowCallback calls both on every trial it logs, so
    every later run of the process went to that trial's database and experiment. mlflow has no public getter
    for either global (``get_tracking_uri`` falls back on the variable and the default) and no scoped setter, so
    they are read and put back here. It can go once mlflow sets a tracking URI for a block of code (or the
    callback takes a client); it breaks if mlflow renames ``_tracking_uri`` or ``_active_experiment_id``.
    """
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils

    from harness.tracking import restored_environment

    with restored_environment(("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")):
        uri, experiment = utils._tracking_uri, fluent._active_experiment_id
        mlflow.set_tracking_uri(tracking_uri)
        fluent._active_experiment_id = None
        try:
            yield
        finally:
            mlflow.set_tracking_uri(uri)  # None: the variable and the default again (mlflow resets its tracer too)
            fluent._active_experiment_id = experiment
