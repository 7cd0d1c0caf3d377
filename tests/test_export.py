"""Kept runs in the libraries' own formats (harness.export): a PEFT adapter folder loaded onto the base it names,
a full fine-tuning's transformers folder, both with the trained model's logits; harness-export and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,
)

from harness import export, records
from harness.config import ConfigError
from harness.run import build_objective, execute, prepare

TINY_LM = [
    "forgetting=none",  # what is kept and loaded back is the subject here, not the retention score
    "model=tiny_llama",
    "budget=tiny",
    "budget.max_steps=2",
    "budget.eval_steps=2",
    "budget.batch_size=4",
    "task.max_seq_length=128",
    "budget.max_eval_samples=2",
    "task.max_new_tokens=2",
    "task.generator.n_train=8",
    "task.generator.n_validation=2",
    "task.generator.n_test=2",
    "keep_artifacts=true",
]
PROMPTS = ["What is 12 + 30?", "Reverse the word tiny."]
# Reloading the kept tensors into the same architecture on the same device repeats the same float operations.
EXACT = 1e-6
MERGED = 1e-5  # W + BA folded into one matrix sums in another order


class LogitsAtTheEnd(TrainerCallback):
    """The trained model's logits on a fixed batch, taken as training ends: the model the run then keeps."""

    def __init__(self, batch):
        self.batch = batch
        self.logits: torch.Tensor | None = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.logits = model(**self.batch).logits.detach().cpu()
        model.train(was_training)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).logits


def _kept(results: Path, *overrides: str) -> tuple[dict, Path, dict, torch.Tensor]:
    """A kept run trained in this process, its folder, the fixed batch and the trained model's logits on it."""
    cfg = compose_config([*TINY_LM, *overrides, f"results_dir={results}"])
    from harness import models

    batch = dict(models.load_tokenizer(cfg.model)(PROMPTS, return_tensors="pt", padding=True))
    probe = LogitsAtTheEnd(batch)
    record = execute(prepare(cfg), callbacks=[probe])
    assert record["status"] == "success", record.get("error")
    return record, Path(record["artifact_dir"]), batch, probe.logits


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return _kept(tmp_path_factory.mktemp("lora"), "task=arithmetic", "method=lora")


def test_a_kept_lora_adapter_loads_onto_the_base_it_names_with_the_trained_logits(lora_run):
    record, folder, batch, trained = lora_run
    config = json.loads((folder / "adapter_config.json").read_text())
    # tiny_llama is a random draw: its base is kept beside the adapter, and the adapter names it
    assert config["base_model_name_or_path"] == str((folder / "base").resolve())
    assert config["peft_type"] == "LORA" and (folder / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    before = _logits(base, batch)
    adapted = _logits(PeftModel.from_pretrained(base, str(folder)), batch)
    assert torch.allclose(adapted, trained, atol=EXACT, rtol=0)
    assert (trained - before).abs().max() > 100 * EXACT  # two steps of training moved the logits
    # the kept tokenizer is the run's
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert torch.equal(tokenizer(PROMPTS, return_tensors="pt", padding=True)["input_ids"], batch["input_ids"])
    # trained_bytes counts what trained (the adapter files), not the tokenizer or the base kept beside it
    assert record["trained_bytes"] == sum(
        (folder / name).stat().st_size for name in ("adapter_model.safetensors", "adapter_config.json", "README.md")
    )
    # the harness's own loader rebuilds the random base from the run's seed: the same model
    model, _ = export.load_run(record)
    assert torch.allclose(_logits(model, batch), trained, atol=EXACT, rtol=0)


def test_harness_export_merge_writes_a_plain_model_with_the_adapter_logits(lora_run, capsys):
    record, folder, batch, trained = lora_run
    results = folder.parents[1]
    assert export.main([record["run_id"], "--results-dir", str(results), "--merge"]) == 0
    merged = results / "exports" / f"{record['run_id']}-merged"
    assert not (merged / "adapter_config.json").exists() and (merged / "config.json").is_file()
    assert torch.allclose(_logits(AutoModelForCausalLM.from_pretrained(str(merged)), batch), trained, atol=MERGED)
    assert AutoTokenizer.from_pretrained(str(merged)).pad_token is not None
    # without --merge: an adapter folder that stands alone (its random base copied and named)
    out = results / "adapter_out"
    assert export.main([record["run_id"], "--results-dir", str(results), "--out", str(out)]) == 0
    named = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert named == str((out / "base").resolve())
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(named), str(out))
    assert torch.allclose(_logits(adapter, batch), trained, atol=EXACT, rtol=0)
    assert capsys.readouterr().out.splitlines() == [f"wrote {merged}", f"wrote {out}"]


def test_a_kept_full_fine_tuning_is_a_transformers_folder_and_a_reward_model(tmp_path):
    """A full reward run (a one-label scorer on tiny_llama): save_pretrained's folder, loaded by transformers
    alone with the trained logits, and accepted as PPO's reward model only while its tensors are the record's."""
    record, folder, batch, trained = _kept(tmp_path, "task=arithmetic_pref", "objective=reward", "method=full")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "base").exists()  # every weight trained: no base to keep
    loaded = AutoModelForSequenceClassification.from_pretrained(str(folder))
    assert loaded.config.num_labels == 1
    assert torch.allclose(_logits(loaded, batch), trained, atol=EXACT, rtol=0)
    model, _ = export.load_run(record)
    assert torch.allclose(_logits(model, batch), trained, atol=EXACT, rtol=0)

    ppo = compose_config(
        [
            *TINY_LM,
            "task=arithmetic_pref",
            "objective=ppo",
            "method=lora",
            "objective.reward=model",
            f"objective.reward_run={record['run_id']}",
            f"results_dir={tmp_path}",
        ]
    )
    build_objective(ppo)  # as kept: accepted
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    dropped = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != dropped}, str(folder / "model.safetensors"))
    with pytest.raises(ConfigError, match=rf"1 tensors missing \['{dropped}'\], 0 unexpected \[\]$"):
        build_objective(ppo)


def _method_config(name: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_config([*TINY_LM, "task=arithmetic", f"method={name}"]).method, resolve=True)


def _write_record(results: Path, record: dict, **changes) -> str:
    changed = {**record, **changes, "run_id": changes.get("run_id", record["run_id"])}
    records.write_record(records.record_path(results, changed["run_id"]), changed)
    return changed["run_id"]


def test_harness_export_refusals_are_one_line_before_any_model_loads(lora_run, tmp_path, capsys, no_model_load):
    record, folder, _, _ = lora_run
    results = tmp_path / "results"
    cases = {
        "0123456789abcdef": f"no usable run '0123456789abcdef' in {results / 'runs'}",
        _write_record(results, record, run_id="failedrun0000000", status="failed"): "has status failed, not success",
        _write_record(results, record, run_id="notkept000000000", artifact_dir=None): "keep_artifacts=true force=true",
    }
    # Runs of other methods: the LoRA run's record with that method's config, beside a folder in its format.
    (results / "artifacts").mkdir()
    for method, kept, expected in (
        ("prompt", None, "which adds virtual tokens rather than weights and cannot be merged"),
        ("adapter_houlsby", "trained.safetensors", "the harness's own bottleneck adapters, which no transformers"),
    ):
        config = {**record["config"], "method": _method_config(method)}
        run_id = _write_record(results, record, run_id=f"{method[:6]}0000000000", config=config, method=method)
        if kept is None:
            (results / "artifacts" / run_id).symlink_to(folder)
        else:
            (results / "artifacts" / run_id).mkdir()
            (results / "artifacts" / run_id / kept).write_bytes(b"")
        cases[run_id] = expected
    for run_id, expected in cases.items():
        assert export.main([run_id, "--results-dir", str(results), "--merge"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
