"""Measurement: peaks read exactly and per phase, parameters counted by hand, time and tokens as they were spent."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import TINY

from harness import measure
from harness.cli import run_one

MIB = 2**20


def _touch(mib: int) -> torch.Tensor:
    """A tensor whose pages are really resident (torch.empty would map them lazily)."""
    return torch.ones(mib * MIB // 4, dtype=torch.float32)


@pytest.mark.skipif(not measure.KernelHighWaterMarkProbe.available(), reason="no resettable VmHWM on this kernel")
def test_a_known_200_mib_allocation_is_read_within_5_percent_however_brief():
    measure.release_freed_memory()
    meter = measure.MemoryMeter(torch.device("cpu"))
    meter.start()
    assert meter.source == "linux_vmhwm"
    block = _touch(200)
    del block  # freed at once: a 20 ms sampler would most likely never see it
    meter.stop()
    above = meter.as_record()["train_peak_above_baseline_bytes"]
    assert abs(above - 200 * MIB) <= 0.05 * 200 * MIB, above / MIB


def test_where_the_kernel_keeps_no_peak_rss_is_sampled_and_the_record_says_so(monkeypatch):
    monkeypatch.setattr(measure.KernelHighWaterMarkProbe, "available", staticmethod(lambda: False))
    measure.release_freed_memory()
    meter = measure.MemoryMeter(torch.device("cpu"))
    meter.start()
    block = _touch(200)
    time.sleep(0.1)  # held for five sampling intervals
    del block
    meter.stop()
    record = meter.as_record()
    assert record["source"] == "rss_sampled_20ms"
    assert abs(record["train_peak_above_baseline_bytes"] - 200 * MIB) <= 0.05 * 200 * MIB


def test_an_evaluation_spike_is_the_evaluation_peak_not_the_training_peak():
    measure.release_freed_memory()
    meter = measure.MemoryMeter(torch.device("cpu"))
    meter.start()
    kept = _touch(50)  # training memory, alive across the evaluation
    with meter.phase_of("eval"):
        spike = _touch(300)
        del spike
    after = _touch(20)
    del after
    meter.stop()
    record = meter.as_record()
    assert 50 * MIB <= record["train_peak_above_baseline_bytes"] < 100 * MIB
    assert record["eval_peak_above_baseline_bytes"] >= 340 * MIB  # the spike on top of what training holds
    del kept


def test_a_run_keeps_its_evaluation_memory_out_of_its_training_peak(make_cfg, monkeypatch):
    """Every evaluation of a real run allocates 300 MiB; the training peak must not see it."""
    from harness.objectives import cls

    original = cls.compute_metrics_for

    def hungry(task):
        compute = original(task)

        def wrapped(prediction):
            block = _touch(300)
            del block
            return compute(prediction)

        return wrapped

    monkeypatch.setattr(cls, "compute_metrics_for", hungry)
    record = run_one(make_cfg(*TINY, "method=lora"))
    memory = record["memory"]
    assert memory["eval_peak_above_baseline_bytes"] >= 300 * MIB
    assert memory["train_peak_above_baseline_bytes"] < 150 * MIB


SLOW_EVALUATION_S = 2.0


def test_evaluation_time_is_not_charged_to_training(make_cfg, monkeypatch):
    """Three evaluations during training (steps 0, 1, 2) and one after it (the test split; the step-2 validation
    pass is the final one), each made two seconds slower."""
    from harness.objectives import cls

    original = cls.compute_metrics_for

    def slow(task):
        compute = original(task)

        def wrapped(prediction):
            time.sleep(SLOW_EVALUATION_S)
            return compute(prediction)

        return wrapped

    monkeypatch.setattr(cls, "compute_metrics_for", slow)
    record = run_one(make_cfg(*TINY, "method=lora"))
    assert record["compute"]["eval_seconds_during_training"] >= 3 * SLOW_EVALUATION_S
    assert record["time"]["final_eval_seconds"] >= SLOW_EVALUATION_S
    # two tiny steps (well under a second even on shared cores); any evaluation charged would add two
    assert record["time"]["train_seconds"] < SLOW_EVALUATION_S


def test_trained_tokens_are_the_attention_masks_summed_over_the_batches_trained(make_cfg, monkeypatch):
    from harness.objectives.base import DataOrderFingerprint

    masks, padded = [], []
    original = DataOrderFingerprint.training_step

    def counting(self, model, inputs, *args, **kwargs):
        masks.append(int(inputs["attention_mask"].sum()))
        padded.append(int(inputs["attention_mask"].numel()))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(DataOrderFingerprint, "training_step", counting)
    record = run_one(make_cfg(*TINY, "method=lora", "budget.max_steps=3"))
    assert len(masks) == 3
    assert record["compute"]["train_tokens"] == sum(masks)
    assert sum(masks) < sum(padded)  # batches were padded, and the padding is not counted


def test_lora_on_a_roberta_base_config_counts_method_and_head_by_hand():
    """r=8 on query and value of roberta-base: 12 x 2 x (768*8 + 8*768) = 294,912 method parameters; the head
    (dense 768x768+768, out_proj 768x2+2 = 592,130) trains too, and the total counts it once though PEFT copies it."""
    from peft import LoraConfig, get_peft_model
    from transformers import RobertaConfig, RobertaForSequenceClassification

    with torch.device("meta"):
        base = RobertaForSequenceClassification(RobertaConfig(num_labels=2))
    base_total = sum(p.numel() for p in base.parameters())
    model = get_peft_model(base, LoraConfig(r=8, target_modules=["query", "value"], task_type="SEQ_CLS"))
    counts = measure.parameter_counts(model, ["classifier"])
    assert counts["method"] == 294_912
    assert counts["head"] == 768 * 768 + 768 + 768 * 2 + 2 == 592_130
    assert counts["trainable"] == 294_912 + 592_130 == model.get_nb_trainable_parameters()[0]
    assert counts["total"] == base_total + 294_912
    assert model.get_nb_trainable_parameters()[1] == counts["total"] + 592_130  # PEFT counts the head twice


def test_weights_bytes_count_each_storage_once():
    shared = torch.nn.Linear(10, 10)
    model = torch.nn.Sequential(shared, shared, torch.nn.BatchNorm1d(10))
    expected = (10 * 10 + 10) * 4 + (10 + 10) * 4 + (10 + 10) * 4 + 8  # linear once, norm weights, running stats, count
    assert measure.tensor_bytes(model) == expected
