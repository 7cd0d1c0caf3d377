"""Every method trains on a tiny random BERT and is counted correctly."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, method_names

from harness import methods, models, records
from harness.cli import run_one
from harness.measure import count_parameters
from harness.run import prepare

ALL_METHODS = method_names()


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_trains_two_steps_and_writes_a_valid_record(make_cfg, method):
    cfg = make_cfg(*TINY, f"method={method}")
    record = run_one(cfg)
    on_disk = records.read_record(records.record_path(cfg.results_dir, record["run_id"]))
    assert on_disk["status"] == "success", on_disk.get("error")
    assert records.missing_fields(on_disk) == []
    assert on_disk["compute"]["steps"] == 2
    assert on_disk["compute"]["samples"] == 2 * 8
    assert on_disk["compute"]["train_tokens"] > 0
    assert 0 < on_disk["params"]["trainable"] <= on_disk["params"]["total"]
    assert on_disk["trained_bytes"] > 0
    assert 0.0 <= on_disk["primary_metric"]["test"] <= 1.0
    # evaluated before training (step 0) and after every step
    assert [p["step"] for p in on_disk["learning_curve"] if "eval_accuracy" in p] == [0, 1, 2]


def test_methods_cover_the_issue_list():
    wanted = {
        "full",
        "head",
        "bitfit",
        "lora",
        "dora",
        "qlora",
        "adalora",
        "ia3",
        "loha",
        "lokr",
        "vera",
        "prefix",
        "prompt",
        "ptuning",
        "ln_tuning",
        "adapter_houlsby",
        "adapter_pfeiffer",
    }
    assert wanted <= set(ALL_METHODS)


def _wrapped(cfg):
    """Load and wrap the model exactly as a run does, without training."""
    prepared = prepare(cfg)
    num_labels = len(cfg.task.label_names)
    quantization = cfg.method.get("quantization") or cfg.model.get("quantization")
    model = models.load_classifier(cfg.model, num_labels, quantization, cfg.seed)
    return methods.apply_method(model, prepared.method_object, prepared.context)


@pytest.mark.parametrize("method", ["lora", "dora", "qlora", "ia3", "prefix", "prompt", "vera", "ln_tuning"])
def test_trainable_count_equals_peft_count(make_cfg, method):
    model = _wrapped(make_cfg(*TINY, f"method={method}"))
    assert count_parameters(model) == model.get_nb_trainable_parameters()


def test_4bit_weights_count_as_logical_parameters(make_cfg):
    from bitsandbytes.nn import Params4bit

    quantized = _wrapped(make_cfg(*TINY, "method=qlora"))
    plain = _wrapped(make_cfg(*TINY, "method=lora"))
    assert any(isinstance(p, Params4bit) for p in quantized.parameters())
    assert count_parameters(quantized) == count_parameters(plain)
    packed = sum(p.numel() for p in quantized.parameters())
    assert packed < count_parameters(quantized)[1]


def test_lora_on_roberta_base_matches_the_lora_paper_closed_form():
    """r=8 on query and value of roberta-base: 12 layers x 2 x (768*8 + 8*768) = 294,912 ("0.3M")."""
    from peft import LoraConfig, get_peft_model
    from transformers import RobertaConfig, RobertaForSequenceClassification

    with torch.device("meta"):
        base = RobertaForSequenceClassification(RobertaConfig(num_labels=2))
    model = get_peft_model(base, LoraConfig(r=8, target_modules=["query", "value"]))
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    assert lora == 294_912
    assert model.get_nb_trainable_parameters()[0] == 294_912


def test_trainable_counts_order_head_bitfit_lora_full(make_cfg):
    counts = {
        m: count_parameters(_wrapped(make_cfg(*TINY, f"method={m}")))[0] for m in ("head", "bitfit", "lora", "full")
    }
    assert counts["head"] < counts["bitfit"] < counts["lora"] < counts["full"]


def test_head_trains_in_every_method(make_cfg):
    for method in ("lora", "prefix", "adapter_houlsby", "bitfit", "ia3"):
        model = _wrapped(make_cfg(*TINY, f"method={method}"))
        head = [n for n, p in model.named_parameters() if "classifier" in n and p.requires_grad]
        assert head, f"{method}: classifier is frozen"


def test_8bit_base_with_lora_trains(make_cfg):
    record = run_one(make_cfg(*TINY, "method=lora", "model.quantization=8bit"))
    assert record["status"] == "success" and record["memory"]["quantization"] == "8bit"
    from bitsandbytes.nn import Int8Params

    model = _wrapped(make_cfg(*TINY, "method=lora", "model.quantization=8bit"))
    assert any(isinstance(p, Int8Params) for p in model.parameters())


def test_adalora_reallocates_its_rank_budget_and_the_record_lists_it(make_cfg):
    """PEFT's update_and_allocate after every optimizer step moves rank between modules (init_r 12 -> target_r 8
    on average); without it every module would keep all 12 ranks."""
    record = run_one(make_cfg(*TINY, "method=adalora", "budget.max_steps=6"))
    allocation = record["rank_allocation"]
    assert (allocation["init_r"], allocation["target_r"], allocation["total_step"]) == (12, 8, 6)
    ranks = allocation["ranks"]
    assert sorted(ranks) == [f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]
    assert all(rank != 12 for rank in ranks.values()) and len(set(ranks.values())) > 1
    assert allocation["final_rank_budget"] == sum(ranks.values()) == allocation["target_rank_budget"] == 4 * 8
    assert allocation["initial_rank_budget"] == 4 * 12
    # evaluated on the task's loss: an untrained 2-class head scores about ln 2, PEFT's penalty would add ~1.7
    step_0 = next(point for point in record["learning_curve"] if point["step"] == 0 and "eval_loss" in point)
    assert step_0["eval_loss"] < 1.0, step_0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["budget.max_steps=null", "budget.max_time_s=60"], "budget.max_steps: adalora schedules its rank budget"),
        (
            ["budget.max_steps=null", "budget.max_train_tokens=5000"],
            "budget.max_steps: adalora schedules its rank budget",
        ),
        (["+method.total_step=10"], "method.total_step: is set from the budget (its optimizer steps); remove it"),
    ],
)
def test_adalora_without_a_step_count_to_schedule_by_is_refused(make_cfg, overrides, message):
    from harness.config import ConfigError, validate

    with pytest.raises(ConfigError) as error:
        validate(make_cfg(*TINY, "method=adalora", *overrides))
    assert str(error.value).startswith(message)


def test_an_adalora_evaluation_loss_is_the_task_loss_without_the_orthogonal_penalty(make_cfg):
    """PEFT adds AdaLoRA's penalty to outputs.loss on every forward; inside an evaluation window the loss is the
    cross-entropy of the logits alone, and the penalty is back for training afterwards."""
    cfg = make_cfg(*TINY, "method=adalora")
    prepared = prepare(cfg)
    model = models.load_classifier(cfg.model, 2, None, cfg.seed)
    model = methods.apply_method(model, prepared.method_object, prepared.context)
    batch = {"input_ids": torch.randint(5, 100, (4, 12)), "labels": torch.tensor([0, 1, 1, 0])}
    model.eval()
    with torch.no_grad():
        trained_on = model(**batch)
        with methods.task_loss_only(model):
            evaluated = model(**batch)
        after = model(**batch)
    cross_entropy = torch.nn.functional.cross_entropy(evaluated.logits, batch["labels"])
    assert evaluated.loss.item() == pytest.approx(cross_entropy.item(), rel=1e-6)
    assert trained_on.loss.item() > cross_entropy.item() + 0.01  # the penalty is there outside the window
    assert after.loss.item() == pytest.approx(trained_on.loss.item(), rel=1e-6)
