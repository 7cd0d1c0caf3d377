"""The library-version shims of harness/compat.py, two tests each.

The first of each pair shows that the installed library still behaves the way
the shim works around (or relies on). When an upgrade makes it fail, read the
shim's docstring: the shim can probably go, or it no longer works. The second
shows the shim doing its job. Everything here is a tiny model built from a
config (or a 64x64 layer) and at most one forward and backward pass.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harness import compat
from harness.measure import parameter_count


def tiny_llama_config(vocab_size: int = 32):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=vocab_size,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=2,
    )


def tiny_llama(seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config())


def tiny_bert_classifier():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    return BertForSequenceClassification(config)


def tiny_tokenizer():
    """A word-level tokenizer built in memory (no files, no Hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["<pad>", "<unk>", "<eos>", "a", "b", "c"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


# -- bitsandbytes 0.50: 4-bit weights repacked for CPU inference ------------------------------------------------


def _linear_4bit():
    import bitsandbytes as bnb

    torch.manual_seed(0)
    return bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4").to("cpu")


def _trains_after_evaluating(layer) -> tuple[bool, torch.Tensor | None]:
    """(weights repacked by the eval forward, the input's gradient of the training forward after it)."""
    inputs = torch.randn(4, 8, 64, generator=torch.Generator().manual_seed(1))
    layer.eval()
    with torch.no_grad():
        layer(inputs)
    repacked = bool(getattr(layer.weight.quant_state, "packing_format_for_cpu", False))
    layer.train()
    trained = inputs.clone().requires_grad_(True)
    try:
        layer(trained).sum().backward()
    except RuntimeError:
        return repacked, None
    return repacked, trained.grad


def test_bitsandbytes_still_repacks_4bit_weights_for_cpu_inference():
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("bitsandbytes repacks only on CPUs with AVX512-BF16")
    repacked, gradient = _trains_after_evaluating(_linear_4bit())
    assert repacked, (
        "bitsandbytes no longer repacks 4-bit weights in eval mode: drop keep_4bit_weights_trainable_on_cpu"
    )
    assert gradient is None, "training after repacking works now: drop keep_4bit_weights_trainable_on_cpu"


def test_keep_4bit_weights_trainable_on_cpu_lets_the_layer_train_after_evaluating():
    fresh = _linear_4bit()
    inputs = torch.randn(4, 8, 64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    fresh(inputs).sum().backward()
    layer = _linear_4bit()
    assert compat.keep_4bit_weights_trainable_on_cpu(nn.Sequential(layer))[0] is layer
    repacked, gradient = _trains_after_evaluating(layer)
    assert not repacked
    assert gradient is not None and torch.allclose(gradient, inputs.grad)


# -- bitsandbytes 0.50 / PEFT 0.21: a 4-bit weight's numel() counts bytes, not values ----------------------------


def test_bitsandbytes_4bit_weights_still_count_storage_not_values():
    weight = _linear_4bit().weight
    assert type(weight).__name__ == "Params4bit"  # the name PEFT's get_nb_trainable_parameters checks
    assert weight.numel() * 2 * weight.element_size() == 64 * 64, "numel() counts values now: drop the doubling"


def test_is_4bit_parameter_recognises_4bit_weights_only():
    from bitsandbytes.nn import Int8Params

    weight = _linear_4bit().weight
    assert compat.is_4bit_parameter(weight)
    assert parameter_count(weight) == 64 * 64
    plain = nn.Parameter(torch.zeros(8, 8))
    assert not compat.is_4bit_parameter(plain) and parameter_count(plain) == 64
    assert not compat.is_4bit_parameter(Int8Params(torch.zeros(8, 8, dtype=torch.int8), requires_grad=False))


# -- PEFT 0.21: LN tuning's merge_and_unload leaves modules_to_save wrappers (a scorer's head) in the model -------


def _ln_tuned_classifier():
    """A tiny BERT scorer under LN tuning, its head's trained copy moved away from the original."""
    from peft import LNTuningConfig, get_peft_model

    model = get_peft_model(
        tiny_bert_classifier(),
        LNTuningConfig(task_type="SEQ_CLS", target_modules="(?i).*norm", modules_to_save=["classifier"]),
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "modules_to_save" in name:
                parameter.add_(1.0)
    return model.eval()


def test_peft_ln_tuning_still_leaves_the_head_wrapped_after_merge_and_unload():
    from peft.utils.other import AuxiliaryTrainingWrapper

    merged = _ln_tuned_classifier().merge_and_unload()
    assert isinstance(merged.classifier, AuxiliaryTrainingWrapper), "LN tuning unloads its wrappers: drop the shim"


def test_unload_leftover_wrappers_puts_the_trained_head_in_place(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = _ln_tuned_classifier()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    merged = compat.unload_leftover_wrappers(model.merge_and_unload())
    assert isinstance(merged.classifier, nn.Linear)
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, adapted, atol=1e-6)


# -- transformers 5 / PEFT 0.21: prefix tuning looks for ``past_key_values``, encoders take ``cache`` --------------


def _prefix_config():
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)


def test_peft_still_refuses_prefix_tuning_on_a_transformers_5_encoder():
    from peft import get_peft_model

    model = tiny_bert_classifier()
    parameters = inspect.signature(model.bert.forward).parameters
    assert "cache" in parameters and "past_key_values" not in parameters, "encoders take past_key_values again"
    peft_model = get_peft_model(model, _prefix_config())
    ids = torch.tensor([[5, 6, 7, 8]])
    with pytest.raises(ValueError, match="past key values"):  # no error: PEFT takes ``cache``, drop the shim
        peft_model(input_ids=ids, attention_mask=torch.ones_like(ids))


def test_expose_legacy_cache_kwarg_lets_prefix_tuning_reach_an_encoder():
    from peft import get_peft_model

    model = tiny_bert_classifier().eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    compat.expose_legacy_cache_kwarg(model)
    assert "past_key_values" in inspect.signature(model.bert.forward).parameters
    peft_model = get_peft_model(model, _prefix_config()).eval()
    with torch.no_grad():
        prefixed = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert prefixed.shape == (1, 2)
    assert not torch.allclose(prefixed, plain)  # the virtual tokens reached the encoder's attention
    compat.expose_legacy_cache_kwarg(model)  # a second call leaves the already exposed forward alone
    assert list(inspect.signature(model.bert.forward).parameters).count("past_key_values") == 1


# -- transformers 5.24: a dequantised GGUF model still carries its GGUF quantizer ---------------------------------


@pytest.fixture
def tiny_gguf(tmp_path):
    """A 2-layer Llama with a 32-token vocabulary as a GGUF file of float32 tensors (about 300 KB)."""
    import gguf

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    hidden, ffn, layers, heads, kv_heads, vocab = 64, 128, 2, 4, 2, 32
    writer.add_name("tiny")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(["<pad>", "<eos>", *(chr(ord("a") + i) for i in range(vocab - 2))])
    writer.add_token_types([3, 3, *[1] * (vocab - 2)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_merges([])
    writer.add_pad_token_id(0)
    writer.add_eos_token_id(1)
    rng = np.random.default_rng(0)
    kv = kv_heads * hidden // heads
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (hidden,),
            f"blk.{i}.ffn_norm.weight": (hidden,),
            f"blk.{i}.attn_q.weight": (hidden, hidden),
            f"blk.{i}.attn_k.weight": (kv, hidden),
            f"blk.{i}.attn_v.weight": (kv, hidden),
            f"blk.{i}.attn_output.weight": (hidden, hidden),
            f"blk.{i}.ffn_gate.weight": (ffn, hidden),
            f"blk.{i}.ffn_up.weight": (ffn, hidden),
            f"blk.{i}.ffn_down.weight": (hidden, ffn),
        }
    for name, shape in shapes.items():
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _load_gguf(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    assert all(type(p) is nn.Parameter and p.dtype == torch.float32 for p in model.parameters())  # dequantised
    return model


def test_transformers_still_refuses_to_save_a_dequantised_gguf_model(tiny_gguf, tmp_path):
    model = _load_gguf(tiny_gguf)
    assert model.hf_quantizer is not None and getattr(model.config, "quantization_config", None) is not None
    with pytest.raises(ValueError, match="not serializable"):  # no error: drop forget_gguf_quantization
        model.save_pretrained(tmp_path / "saved")


def test_forget_gguf_quantization_saves_the_dequantised_weights(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM

    model = compat.forget_gguf_quantization(_load_gguf(tiny_gguf))
    model.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert getattr(reloaded, "hf_quantizer", None) is None
    state, again = model.state_dict(), reloaded.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)


def test_model_folder_converts_a_gguf_checkpoint_once_through_the_shim(tiny_gguf, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from harness import models

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    spec = OmegaConf.create({"pretrained": str(tiny_gguf.parent), "gguf_file": tiny_gguf.name})
    folder = models.model_folder(spec)
    assert folder.startswith(str(tmp_path / "cache")) and models.model_folder(spec) == folder
    assert "quantization_config" not in json.loads((Path(folder) / "config.json").read_text())


# -- TRL 1.16: RLOO and GRPO reload their KL reference from ``config._name_or_path`` -----------------------------


def _grpo_reference(model, tmp_path, beta: float = 0.1):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(tmp_path / "trainer"),
        beta=beta,
        num_generations=2,
        per_device_train_batch_size=2,
        max_completion_length=4,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model,
        args=args,
        processing_class=tiny_tokenizer(),
        train_dataset=Dataset.from_dict({"prompt": ["a b", "b c"]}),
        reward_funcs=[lambda prompts, completions, **_: [0.0] * len(completions)],
    )
    return trainer.ref_model


def test_trl_still_rebuilds_the_kl_reference_from_the_config_path(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "elsewhere")
    model.config._name_or_path = str(tmp_path / "elsewhere")
    saved = model.lm_head.weight.detach().clone()
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # the model given to TRL is no longer what its config's path holds
    reference = _grpo_reference(model, tmp_path)
    assert reference is not None and reference is not model
    assert torch.equal(reference.lm_head.weight, saved), "TRL copies the given model now: drop pin_trl_reference"


def test_pin_trl_reference_gives_trl_the_models_own_weights(tmp_path):
    model = tiny_llama()
    compat.pin_trl_reference(model, 0.1, tmp_path / "reference")
    assert model.config._name_or_path == str(tmp_path / "reference")
    reference = _grpo_reference(model, tmp_path)
    assert all(
        torch.equal(a, b) for a, b in zip(reference.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_pin_trl_reference_saves_nothing_when_trl_builds_no_reference(tmp_path):
    from peft import LoraConfig, get_peft_model

    compat.pin_trl_reference(tiny_llama(), 0.0, tmp_path / "no_beta")
    compat.pin_trl_reference(get_peft_model(tiny_llama(), LoraConfig(task_type="CAUSAL_LM")), 0.1, tmp_path / "peft")
    assert not (tmp_path / "no_beta").exists() and not (tmp_path / "peft").exists()


# -- TRL 1.16: use_adapter and disable_dropout_in_model live outside TRL's public API ------------------------------


def test_trl_still_keeps_its_adapter_and_dropout_helpers_in_trainer_utils():
    import trl
    import trl.trainer.utils

    assert callable(trl.trainer.utils.use_adapter) and callable(trl.trainer.utils.disable_dropout_in_model)
    assert not hasattr(trl, "use_adapter"), "trl exports use_adapter now: import it from trl in compat.use_adapter"
    assert not hasattr(trl, "disable_dropout_in_model"), "trl exports disable_dropout_in_model now: import it from trl"


def test_use_adapter_activates_the_named_adapter_or_none_and_restores_the_active_one():
    from peft import LoraConfig, get_peft_model

    base = tiny_llama()
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False)).eval()
    model.add_adapter("ref", LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with compat.use_adapter(model, "ref") as same:
            assert same is model and model.active_adapter == "ref"
        assert model.active_adapter == "default"
        with compat.use_adapter(model, None):
            assert torch.allclose(model(input_ids=ids).logits, plain, atol=1e-6)
        assert torch.allclose(model(input_ids=ids).logits, adapted)


def test_disable_dropout_sets_every_dropout_to_zero():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Sequential(nn.Dropout(0.5)))
    compat.disable_dropout(model)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0, 0]


# -- transformers 5.24: Trainer.evaluate logs, hands on and returns one dict --------------------------------------


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, labels=None):
        out = self.linear(x).squeeze(-1)
        return {"loss": ((out - labels) ** 2).mean(), "logits": out}


def _evaluate_with(trainer_class, tmp_path):
    """evaluate() of a 2-row regression; (its return value, what on_evaluate got, every dict log() got, the trainer)."""
    from datasets import Dataset
    from transformers import TrainerCallback, TrainingArguments

    seen: dict[str, dict] = {}

    class OnEvaluate(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            seen["metrics"] = metrics

    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_eval_batch_size=2,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
    )
    rows = Dataset.from_dict({"x": [[0.0, 1.0], [1.0, 0.0]], "labels": [0.0, 1.0]})
    trainer = trainer_class(model=Regression(), args=args, eval_dataset=rows, callbacks=[OnEvaluate()])
    returned = trainer.evaluate()
    return returned, seen["metrics"], trainer.logged, trainer


def _recording(base):
    class Recording(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.logged = []

        def log(self, logs, *args, **kwargs):
            self.logged.append(logs)
            super().log(logs, *args, **kwargs)

    return Recording


def test_trainer_evaluate_still_logs_hands_on_and_returns_the_same_dict(tmp_path):
    from transformers import Trainer

    parameters = set(inspect.signature(Trainer.evaluate).parameters)
    assert parameters == {"self", "eval_dataset", "ignore_keys", "metric_key_prefix"}, (
        "Trainer.evaluate takes new arguments: if one adds metrics, GenerationEvalMixin.log may no longer be needed"
    )
    returned, on_evaluate, logged, _ = _evaluate_with(_recording(Trainer), tmp_path)
    assert "eval_runtime" in returned
    assert logged[-1] is returned and on_evaluate is returned, "merge_into_evaluation_log no longer reaches everything"


def test_merge_into_evaluation_log_reaches_history_callbacks_and_return_value(tmp_path):
    from transformers import Trainer

    class WithExtra(_recording(Trainer)):
        def log(self, logs, *args, **kwargs):
            compat.merge_into_evaluation_log(logs, {"eval_extra": 0.5}, 100.0)
            super().log(logs, *args, **kwargs)

    returned, on_evaluate, _, trainer = _evaluate_with(WithExtra, tmp_path)
    assert returned["eval_extra"] == on_evaluate["eval_extra"] == trainer.state.log_history[-1]["eval_extra"] == 0.5
    assert returned["eval_runtime"] >= 100.0
    training_log = {"loss": 1.0, "learning_rate": 0.1}
    compat.merge_into_evaluation_log(training_log, {"eval_extra": 0.5}, 100.0)
    assert training_log == {"loss": 1.0, "learning_rate": 0.1}


# -- transformers 5.24 / PEFT 0.21: PEFT reads attributes transformers deprecates -----------------------------------


def _transformers_future_warnings(hide: bool) -> list[str]:
    from peft import LoraConfig, get_peft_model

    model = tiny_llama()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if hide:
            compat.hide_transformers_deprecations()
        get_peft_model(model, LoraConfig(task_type="CAUSAL_LM"))
    return [str(w.message) for w in caught if issubclass(w.category, FutureWarning) and "transformers" in w.filename]


def test_peft_still_calls_apis_transformers_deprecates():
    assert _transformers_future_warnings(hide=False), "PEFT no longer warns: drop hide_transformers_deprecations"


def test_hide_transformers_deprecations_hides_them():
    assert _transformers_future_warnings(hide=True) == []


# -- hydra-core 1.3: the cross product of sweep overrides lives only in the basic sweeper --------------------------


def _parsed(*overrides: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def test_hydra_still_crosses_sweep_overrides_only_in_its_internal_basic_sweeper():
    import hydra
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    assert list(inspect.signature(BasicSweeper.split_arguments).parameters) == ["overrides", "max_batch_size"], (
        "Hydra changed BasicSweeper.split_arguments: fix compat.cross_sweep_overrides"
    )
    assert hydra.__version__.startswith("1.3."), (
        f"Hydra {hydra.__version__}: check whether it now exposes the sweep's cross product publicly "
        "(then drop compat.cross_sweep_overrides) and that split_arguments still works the same"
    )


def test_cross_sweep_overrides_gives_one_list_per_combination():
    cells = compat.cross_sweep_overrides(_parsed("method=lora,ia3", "lr=0.1", "task=sst2,rte"))
    assert cells == [
        ["method=lora", "lr=0.1", "task=sst2"],
        ["method=lora", "lr=0.1", "task=rte"],
        ["method=ia3", "lr=0.1", "task=sst2"],
        ["method=ia3", "lr=0.1", "task=rte"],
    ]
    assert compat.cross_sweep_overrides(_parsed("lr=0.1")) == [["lr=0.1"]]
    assert compat.cross_sweep_overrides([]) == [[]]


# -- Optuna 5.0: a trial's storage id is the private ``_trial_id`` -------------------------------------------------


def _study_with_a_trial():
    import optuna

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.enqueue_trial({"x": 1.0})
    study.tell(study.ask(), 0.0)  # ids and numbers differ per storage; one finished trial first, then a live one
    return study, study.ask()


def test_optuna_still_exposes_a_trials_storage_id_only_as_private_trial_id():
    study, trial = _study_with_a_trial()
    frozen = study.get_trials(deepcopy=False)[-1]
    for each in (trial, frozen):
        assert hasattr(each, "_trial_id"), f"{type(each).__name__} has no _trial_id any more: fix compat.trial_id"
        assert not hasattr(each, "trial_id"), f"{type(each).__name__}.trial_id is public now: drop compat.trial_id"


def test_trial_id_lets_a_worker_reattach_to_the_same_trial():
    import optuna

    study, trial = _study_with_a_trial()
    frozen = study.get_trials(deepcopy=False)[-1]
    assert compat.trial_id(trial) == compat.trial_id(frozen)
    assert compat.trial_id(study.trials[0]) != compat.trial_id(trial)
    again = optuna.trial.Trial(study, compat.trial_id(frozen))
    assert again.number == trial.number == frozen.number
    again.report(0.5, step=1)
    assert study.get_trials(deepcopy=False)[-1].intermediate_values == {1: 0.5}


@pytest.fixture
def mlflow_unset(monkeypatch):
    """mlflow with no tracking URI or experiment set in this process (put back as they were after the test)."""
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils

    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(utils, "_tracking_uri", None)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    return utils, fluent


def _log_a_trial_with_optuna_integration(uri: str) -> None:
    """optuna-integration's MLflowCallback logs one finished trial to ``uri``, as harness.tracking calls it."""
    from optuna_integration import MLflowCallback

    study, _ = _study_with_a_trial()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        MLflowCallback(tracking_uri=uri, metric_name="value")(study, study.trials[0])


def test_optuna_integrations_mlflow_callback_still_sets_mlflow_globals_for_the_process(tmp_path, mlflow_unset):
    import os

    utils, fluent = mlflow_unset
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _log_a_trial_with_optuna_integration(uri)
    assert utils._tracking_uri == uri and os.environ["MLFLOW_TRACKING_URI"] == uri, "drop compat.mlflow_scope?"
    assert fluent._active_experiment_id is not None and os.environ["MLFLOW_EXPERIMENT_ID"]


def test_mlflow_scope_puts_mlflows_globals_and_variables_back(tmp_path, mlflow_unset, monkeypatch):
    import os

    import mlflow

    utils, fluent = mlflow_unset
    shell = f"sqlite:///{tmp_path / 'shell.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shell)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with compat.mlflow_scope(uri):
        assert mlflow.get_tracking_uri() == uri
        _log_a_trial_with_optuna_integration(uri)
    assert utils._tracking_uri is None and fluent._active_experiment_id is None
    assert os.environ["MLFLOW_TRACKING_URI"] == shell and "MLFLOW_EXPERIMENT_ID" not in os.environ
    assert mlflow.get_tracking_uri() == shell
