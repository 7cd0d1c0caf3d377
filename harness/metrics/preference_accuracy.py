"""Preference accuracy: fraction of held-out pairs whose chosen answer the model scores above the rejected one.

Predictions are score margins, score(chosen) − score(rejected): a reward
model's rewards, or a language model's log-likelihoods of the two
completions. A tie is not a success. Also returns the mean margin.
"""

import datasets
import evaluate
import numpy as np


class PreferenceAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: score margins (chosen minus rejected); references: 1 (chosen is preferred)",
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        margins = np.asarray(predictions, dtype=float)
        return {
            "preference_accuracy": float(np.mean(margins > 0)) if len(margins) else 0.0,
            "reward_margin": float(np.mean(margins)) if len(margins) else 0.0,
        }
