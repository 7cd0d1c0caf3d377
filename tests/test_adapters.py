"""Bottleneck adapters: identity at initialisation, trainable afterwards."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from harness import methods, models
from harness.adapters import AdaptedLinear, BottleneckAdapter
from harness.run import prepare


def test_adapter_module_is_identity_until_up_projection_moves():
    adapter = BottleneckAdapter(hidden_size=16, bottleneck_size=4)
    hidden = torch.randn(3, 5, 16)
    assert torch.equal(adapter(hidden), hidden)
    with torch.no_grad():
        adapter.up.weight.fill_(0.1)
    assert not torch.allclose(adapter(hidden), hidden)


@pytest.mark.parametrize(("method", "sites_per_layer"), [("adapter_houlsby", 2), ("adapter_pfeiffer", 1)])
def test_wrapped_model_output_is_unchanged_at_initialisation(make_cfg, method, sites_per_layer):
    cfg = make_cfg(*TINY, f"method={method}")
    prepared = prepare(cfg)
    model = models.load_classifier(cfg.model, 2, None, seed=0).eval()
    inputs = {"input_ids": torch.randint(100, 2000, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    with torch.no_grad():
        before = model(**inputs).logits.clone()
    wrapped = methods.apply_method(model, prepared.method_object, prepared.context).eval()
    with torch.no_grad():
        after = wrapped(**inputs).logits
    assert torch.equal(before, after)
    adapted = [m for m in wrapped.modules() if isinstance(m, AdaptedLinear)]
    assert len(adapted) == sites_per_layer * cfg.model.config_overrides.num_hidden_layers
    trainable = {n.split(".")[-2] for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable == {"down", "up", "classifier"}


def test_bottleneck_width_follows_reduction_factor(make_cfg):
    cfg = make_cfg(*TINY, "method=adapter_houlsby", "method.reduction_factor=8")
    prepared = prepare(cfg)
    model = methods.apply_method(
        models.load_classifier(cfg.model, 2, None, 0), prepared.method_object, prepared.context
    )
    widths = {m.adapter.down.out_features for m in model.modules() if isinstance(m, AdaptedLinear)}
    assert widths == {32 // 8}
