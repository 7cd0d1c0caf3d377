"""Search spaces from method YAMLs: distributions, derived keys, and one-line errors for bad specs."""

from __future__ import annotations

import optuna
import pytest
from conftest import method_names
from hydra.core.override_parser.overrides_parser import OverridesParser

from harness.config import ConfigError
from harness.search import SearchSpace, method_overrides, override_value


def test_lora_space_tunes_lr_log_uniform_and_rank_with_alpha_following(make_cfg):
    space = SearchSpace(make_cfg("method=lora").method)
    assert space.distributions["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert space.distributions["r"] == optuna.distributions.CategoricalDistribution([4, 8, 16, 32])
    assert space.assignments({"lr": 1e-3, "r": 16}) == {"lr": 1e-3, "r": 16, "lora_alpha": 32}
    assert isinstance(space.assignments({"lr": 1e-3, "r": 16})["lora_alpha"], int)


def test_derived_rule_scales_and_stays_integer_for_integer_sources(make_cfg):
    space = SearchSpace(make_cfg("method=adalora").method)
    assert space.derived({"lr": 1e-3, "target_r": 8}) == {"init_r": 12, "lora_alpha": 16}
    rs = SearchSpace(make_cfg("method=lora", "+method.search.derive.lora_alpha.power=0.5").method)
    assert rs.derived({"lr": 1e-3, "r": 16}) == {"lora_alpha": 8}  # 2 * sqrt(16), rsLoRA-style


@pytest.mark.parametrize("method", method_names())
def test_every_method_has_a_space_whose_extremes_are_valid_configs(make_cfg, method):
    cfg = make_cfg(f"method={method}")
    space = SearchSpace(cfg.method)
    assert "lr" in space.distributions
    assert len(space.extremes()) == sum(len(getattr(d, "choices", (0, 0))) for d in space.distributions.values())
    space.check_extremes(cfg.method)


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        (["method.search.space.r.type=gaussian"], "method.search.space.r.type", "float, int, categorical"),
        (["+method.search.space.lr.lo=1"], "method.search.space.lr.lo", "high"),
        (["+method.search.space.rank={type:int,low:1,high:4}"], "method.search.space.rank", "lora_alpha"),
        (["method.search.derive.lora_alpha.from=rank"], "method.search.derive.lora_alpha.from", "lr, r"),
        (["method.search.space.r.choices=[]"], "method.search.space.r", "non-empty"),
        (["method.search.space.lr.low=0"], "method.search.space.lr", "low"),
        (["+method.search.grid=1"], "method.search.grid", "space, derive"),
    ],
)
def test_a_bad_search_spec_is_one_line_naming_its_key(make_cfg, overrides, key, allowed):
    with pytest.raises(ConfigError) as error:
        SearchSpace(make_cfg("method=lora", *overrides).method)
    assert error.value.key == key and allowed in str(error.value) and "\n" not in str(error.value)


def test_nulling_a_parameter_takes_it_out_of_the_search(make_cfg):
    space = SearchSpace(make_cfg("method=lora", "method.search.space.r=null", "method.search.derive=null").method)
    assert list(space.distributions) == ["lr"] and space.derive == {}
    with pytest.raises(ConfigError, match="nothing to tune"):
        SearchSpace(make_cfg("method=ia3", "method.search.space.lr=null").method)


def test_study_level_overrides_merge_over_the_method_space(make_cfg):
    space = SearchSpace(make_cfg("method=lora").method, {"space": {"r": {"type": "categorical", "choices": [8]}}})
    assert space.distributions["r"].choices == (8,) and "lr" in space.distributions


@pytest.mark.parametrize(
    "value",
    [1e-05, 0.00012345678901234567, 3, True, None, "sqlite:////tmp/a b/o.db", "m/t/lora/tiny#ab", {"lr": 1e-3, "r": 8}],
)
def test_override_literals_parse_back_to_the_same_value(value):
    parsed = OverridesParser.create().parse_override(f"tuning.x={override_value(value)}").value()
    assert parsed == value and type(parsed) is type(value)


def test_method_overrides_address_method_keys():
    assert method_overrides({"lr": 0.001, "r": 8}) == ["method.lr=0.001", "method.r=8"]
