"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021).

The AdapterHub ``adapters`` library pins transformers 4.x, so the adapter is a
small module here: down-projection, nonlinearity, up-projection, residual. It
wraps the output projection of an attention block or FFN, before that block's
own residual connection and LayerNorm, which is where Houlsby placed it. The
up-projection starts at zero, so at initialisation every adapter is the
identity and the wrapped model computes exactly what the base model did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.config import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class BottleneckAdapter(nn.Module):
    """h + up(act(down(h))), with up initialised to zero."""

    def __init__(self, hidden_size: int, bottleneck_size: int, activation: str = "relu"):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.activation = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck_size, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.activation(self.down(hidden)))


class AdaptedLinear(nn.Module):
    """A frozen projection followed by a trainable adapter."""

    def __init__(self, base: nn.Linear, adapter: BottleneckAdapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(inputs))


@dataclass
class BottleneckAdapterConfig:
    """Which sites get an adapter and how wide its bottleneck is.

    ``sites`` name entries of the model config's ``adapter_sites`` (regexes on
    module names), so the same method YAML serves every architecture.
    """

    # A new nonlinear module after a projection: no weight of the base can absorb it (harness.export).
    merges_into_base = False

    sites: list[str] = field(default_factory=lambda: ["attention_output", "ffn_output"])
    reduction_factor: int = 16
    activation: str = "relu"

    def check(self, context) -> None:
        """Config-only checks, run before the model loads."""
        if self.activation not in ACTIVATIONS:
            raise ConfigError("method.activation", f"got {self.activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        unknown = [s for s in self.sites if s not in context.adapter_sites]
        if unknown:
            defined = ", ".join(context.adapter_sites) or "none (its config has no adapter_sites)"
            raise ConfigError("method.sites", f"{unknown[0]!r} unknown; this model defines: {defined}")

    def apply(self, model: nn.Module, context) -> nn.Module:
        self.check(context)
        patterns = [re.compile(context.adapter_sites[s]) for s in self.sites]
        targets = [
            (name, module)
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and any(p.search(name) for p in patterns)
        ]
        if not targets:
            raise ConfigError("method.sites", f"{self.sites} match no linear layer of this model")
        model.requires_grad_(False)
        for name, linear in targets:
            parent_name, _, child = name.rpartition(".")
            bottleneck = max(1, linear.out_features // self.reduction_factor)
            adapter = BottleneckAdapter(linear.out_features, bottleneck, self.activation)
            adapter.to(device=linear.weight.device, dtype=linear.weight.dtype)
            setattr(model.get_submodule(parent_name), child, AdaptedLinear(linear, adapter))
        context.unfreeze_head(model)
        return model
