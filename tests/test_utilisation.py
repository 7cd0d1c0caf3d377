"""Training FLOPs and MFU: counted from what ran, scaled by padded tokens, set against the device's peak."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForSequenceClassification

from harness import utilisation
from harness.cli import run_one


def _tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
    )
    return BertForSequenceClassification(config)


def _batch(rows: int, length: int) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 100, (rows, length)), "labels": torch.zeros(rows, dtype=torch.long)}


def _counted(run) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def _train_step(model, batch):
    return lambda: model(**batch).loss.backward()


def _forward(model, batch):
    def run():
        with torch.no_grad():
            model(**batch)

    return run


def test_the_first_step_is_counted_exactly_and_later_ones_scale_with_their_padded_tokens():
    model, tally = _tiny_bert(), utilisation.FlopTally()
    first, second = _batch(4, 16), _batch(4, 32)
    tally.step(_train_step(model, first), first)
    exact_first = _counted(_train_step(model, first))
    assert tally.flops == exact_first
    tally.step(_train_step(model, second), second)
    assert tally.flops == pytest.approx(3 * exact_first)  # twice the tokens, twice the work
    exact_second = _counted(_train_step(model, second))
    assert tally.flops == pytest.approx(exact_first + exact_second, rel=0.05)  # attention's L^2 share is small
    assert tally.as_record() == {
        "train_flops": tally.flops,
        "flops_counted_steps": 1,
        "flops_scaled_steps": 1,
        "flops_scaled_by": "padded_tokens",
        "flops_not_counted": None,
    }


def test_a_frozen_base_computes_no_weight_gradients_so_lora_counts_about_two_forwards_and_full_three():
    batch = _batch(8, 24)
    full = _tiny_bert()
    forward = _counted(_forward(full, batch))
    full_ratio = _counted(_train_step(full, batch)) / forward
    lora = get_peft_model(_tiny_bert(), LoraConfig(r=4, task_type="SEQ_CLS", target_modules=["query", "value"]))
    lora_ratio = _counted(_train_step(lora, batch)) / _counted(_forward(lora, batch))
    assert 2.9 <= full_ratio <= 3.05, full_ratio
    assert 1.7 <= lora_ratio <= 2.2, lora_ratio


def test_online_rl_steps_are_not_extrapolated_and_their_records_say_why():
    """A step that generates from raw prompts (TRL's online trainers, PPO's loop) has no size to scale by."""
    tally, ran = utilisation.FlopTally(), []
    for _ in range(2):
        tally.step(lambda: ran.append(1), [{"prompt": "a"}, {"prompt": "b"}])
    record = tally.as_record()
    assert ran == [1, 1] and record["train_flops"] is None and record["flops_counted_steps"] == 0
    assert record["flops_not_counted"] == utilisation.UNCOUNTED_ROLLOUTS
    assert utilisation.utilisation(None, 10.0, torch.device("cpu"), "fp32")["mfu"] is None
    stacked = {"input_ids": torch.zeros(4, 7, dtype=torch.long), "labels": torch.zeros(4, 7)}
    assert utilisation.step_size(stacked) == (28.0, "padded_tokens")  # DPO: chosen and rejected rows stacked


def test_a_failing_step_is_not_charged():
    model, tally = _tiny_bert(), utilisation.FlopTally()
    batch = _batch(2, 8)
    tally.step(_train_step(model, batch), batch)
    counted = tally.flops

    def fails():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        tally.step(fails, batch)
    assert tally.flops == counted and tally.scaled_steps == 0


def test_a_gpu_peak_comes_from_its_specification_and_an_unknown_one_gives_no_mfu(monkeypatch):
    for name, expected in [
        ("NVIDIA H100 PCIe", 756.0e12),  # the longer name wins over "H100"
        ("NVIDIA H100 80GB HBM3", 989.4e12),
        ("NVIDIA A100-SXM4-80GB", 312.0e12),
        ("NVIDIA L40S", 362.05e12),  # not "L4"
    ]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        peak, source = utilisation.peak_flops_per_second(torch.device("cuda"), "bf16")
        assert peak == expected and f"{name} bf16 dense" in source, name
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert utilisation.utilisation(1e15, 10.0, torch.device("cuda"), "bf16")["mfu"] is None


def test_the_cpu_peak_is_a_measured_matmul_rate_reused_within_the_process(monkeypatch):
    calls = []
    monkeypatch.setattr(utilisation, "_measured_cpu_peaks", {})
    monkeypatch.setattr(utilisation, "measure_cpu_peak", lambda dtype: calls.append(dtype) or 1e11)
    for _ in range(2):
        peak, source = utilisation.peak_flops_per_second(torch.device("cpu"), "fp32")
    assert peak == 1e11 and calls == [torch.float32] and source.startswith("measured")
    assert utilisation.utilisation(5e11, 10.0, torch.device("cpu"), "fp32")["mfu"] == pytest.approx(0.5)


def test_every_record_carries_its_training_flops_and_utilisation(make_cfg):
    compute = run_one(make_cfg(*TINY, "method=lora"))["compute"]
    assert compute["train_flops"] > 0
    assert compute["flops_counted_steps"] == 1 and compute["flops_scaled_steps"] == compute["steps"] - 1
    assert compute["flops_scaled_by"] == "padded_tokens"
    assert compute["flops_per_second"] == pytest.approx(compute["train_flops"] / compute["seconds"])
    assert 0 < compute["mfu"] < 1  # a tiny model is far from the peak; above 1 would mean a wrong count
    assert compute["mfu"] == pytest.approx(compute["flops_per_second"] / compute["peak_flops_per_second"])
