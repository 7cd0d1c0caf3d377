"""Project-owned metric modules against hand computations."""

from __future__ import annotations

import math

import pytest

from harness.metrics import available_metrics, load_metric


def test_available_metrics():
    assert {"accuracy", "f1", "matthews_correlation"} <= set(available_metrics())


def test_accuracy():
    assert load_metric("accuracy").compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0]) == {"accuracy": 0.75}


def test_f1_of_positive_class():
    # tp=2, fp=1, fn=1 -> precision 2/3, recall 2/3, F1 2/3
    scores = load_metric("f1").compute(predictions=[1, 1, 1, 0, 0], references=[1, 1, 0, 1, 0])
    assert scores["f1"] == pytest.approx(2 / 3)


def test_matthews_correlation_binary_and_degenerate():
    # tp=2, tn=1, fp=1, fn=1: (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    scores = load_metric("matthews_correlation").compute(predictions=[1, 1, 1, 0, 0], references=[1, 1, 0, 1, 0])
    assert scores["matthews_correlation"] == pytest.approx(1 / 6)
    perfect = load_metric("matthews_correlation").compute(predictions=[0, 1, 2], references=[0, 1, 2])
    assert perfect["matthews_correlation"] == pytest.approx(1.0)
    constant = load_metric("matthews_correlation").compute(predictions=[1, 1, 1], references=[0, 1, 0])
    assert constant["matthews_correlation"] == 0.0 and not math.isnan(constant["matthews_correlation"])


def test_unknown_metric_lists_allowed():
    with pytest.raises(ValueError, match="allowed: accuracy"):
        load_metric("bleu")
