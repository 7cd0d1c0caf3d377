"""Search spaces: what Optuna may tune for a method, read from ``search:`` in its YAML.

A space lives with the method because what is worth tuning is a property of
the method (rank for LoRA, virtual tokens for prefix tuning, reduction factor
for adapters), and a new method stays one YAML file. Layout::

    search:
      space:                       # method key -> distribution
        lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
        r: {type: categorical, choices: [4, 8, 16, 32]}
      derive:                      # method key -> rule on a searched key
        lora_alpha: {from: r, times: 2}      # alpha = 2 * r

Keys are method keys (``lr`` is ``method.lr``); a derived value is
``times * value ** power`` and stays an integer when its source is one.
Everything here is checked before any model loads.
"""

from __future__ import annotations

import json
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.config import ConfigError, validate_method

PARAM_TYPES = ("float", "int", "categorical")
SPEC_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
DERIVE_KEYS = {"from", "times", "power"}


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _distribution(key: str, spec: dict[str, Any]):
    """One Optuna distribution from its spec; Optuna's own checks are reported against ``key``."""
    import optuna.distributions as dist

    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{key}.type", f"got {kind!r}; allowed: {', '.join(PARAM_TYPES)}")
    unknown = sorted(set(spec) - SPEC_KEYS[kind])
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"not a {kind} field; allowed: {', '.join(sorted(SPEC_KEYS[kind]))}")
    try:
        if kind == "categorical":
            choices = spec.get("choices")
            if not choices:
                raise ValueError("choices must be a non-empty list")
            return dist.CategoricalDistribution(list(choices))
        if spec.get("low") is None or spec.get("high") is None:
            raise ValueError("needs low and high")
        if kind == "int":
            return dist.IntDistribution(
                int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")), step=int(spec.get("step") or 1)
            )
        return dist.FloatDistribution(
            float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")), step=spec.get("step")
        )
    except (ValueError, TypeError) as error:
        raise ConfigError(key, str(error).splitlines()[0]) from None


class SearchSpace:
    """The distributions Optuna samples and the rules that derive dependent keys."""

    def __init__(self, method: DictConfig, overrides: dict[str, Any] | None = None, key: str = "method.search"):
        search = _plain(method.get("search")) or {}
        for part, value in (_plain(overrides) or {}).items():
            search.setdefault(part, {}).update(value or {})
        for part in ("space", "derive"):  # `method.search.space.lr=null` takes lr out of the search
            search[part] = {k: v for k, v in (search.get(part) or {}).items() if v is not None}
        unknown = sorted(set(search) - {"space", "derive"})
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}", "not a search field; allowed: space, derive")
        space, derive = search.get("space") or {}, search.get("derive") or {}
        if not space:
            raise ConfigError(f"{key}.space", f"method {method.name} has nothing to tune; add search.space to its YAML")
        tunable = sorted(k for k in method if k not in ("name", "search", "_target_", "quantization"))
        for part, names in (("space", space), ("derive", derive)):
            for name in names:
                if name not in method:
                    raise ConfigError(
                        f"{key}.{part}.{name}", f"not a key of method {method.name}; keys: {', '.join(tunable)}"
                    )
        self.method_name = str(method.name)
        self.distributions = {name: _distribution(f"{key}.space.{name}", dict(spec)) for name, spec in space.items()}
        self.derive = {name: self._check_rule(f"{key}.derive.{name}", dict(rule)) for name, rule in derive.items()}

    def _check_rule(self, key: str, rule: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(rule) - DERIVE_KEYS)
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}", f"not a derive field; allowed: {', '.join(sorted(DERIVE_KEYS))}")
        if rule.get("from") not in self.distributions:
            raise ConfigError(f"{key}.from", f"got {rule.get('from')!r}; allowed: {', '.join(self.distributions)}")
        for field in ("times", "power"):
            if not isinstance(rule.get(field, 1), int | float) or isinstance(rule.get(field, 1), bool):
                raise ConfigError(f"{key}.{field}", f"must be a number (got {rule.get(field)!r})")
        return {"from": rule["from"], "times": rule.get("times", 1), "power": rule.get("power", 1)}

    def derived(self, params: dict[str, Any]) -> dict[str, Any]:
        """Values of the derived keys for sampled params (an int source gives an int)."""
        values = {}
        for name, rule in self.derive.items():
            source = params[rule["from"]]
            value = rule["times"] * source ** rule["power"]
            values[name] = int(round(value)) if isinstance(source, int) and not isinstance(source, bool) else value
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"method.search.derive.{name}", f"gives {value} for {rule['from']}={source}")
        return values

    def assignments(self, params: dict[str, Any]) -> dict[str, Any]:
        """Method keys to set for one trial: sampled then derived."""
        return {**params, **self.derived(params)}

    def extremes(self) -> list[dict[str, Any]]:
        """Parameter sets that put each parameter at each end of its range (categorical: every choice)."""
        from optuna.distributions import CategoricalDistribution

        def ends(d) -> list[Any]:
            return list(d.choices) if isinstance(d, CategoricalDistribution) else [d.low, d.high]

        first = {name: ends(d)[0] for name, d in self.distributions.items()}
        return [{**first, name: value} for name, d in self.distributions.items() for value in ends(d)]

    def check_extremes(self, method: DictConfig) -> None:
        """Validate the method at each end of every range: a trial can never sample a config that fails its checks."""
        from omegaconf import open_dict

        for params in self.extremes():
            probe = method.copy()
            with open_dict(probe):
                probe.update(self.assignments(params))
            validate_method(probe)

    def describe(self) -> dict[str, Any]:
        """JSON-able form for the study's attributes and the cell summary."""
        from optuna.distributions import distribution_to_json

        return {
            "space": {name: json.loads(distribution_to_json(d)) for name, d in self.distributions.items()},
            "derive": self.derive,
        }


def override_value(value: Any) -> str:
    """A Hydra override literal that parses back to exactly ``value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, dict | DictConfig):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in _plain(value).items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def method_overrides(assignments: dict[str, Any]) -> list[str]:
    return [f"method.{name}={override_value(value)}" for name, value in assignments.items()]
