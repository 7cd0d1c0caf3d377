"""Preference accuracy: fraction of held-out pairs whose chosen answer is scored above the rejected one.

Predictions are score margins, score(chosen) − score(rejected), of whichever
quantity the caller scores pairs by (a policy's mean log-probability per
token, DPO's implicit reward, a reward model's output; the caller names the
result after it). A tie counts one half, so a model that cannot tell the two
apart (DPO's implicit reward before training is exactly 0) scores chance,
not 0. A margin that is not finite (a completion with no scored token) is
left out. Also returns the mean margin.
"""

import datasets
import evaluate
import numpy as np

HIGHER_IS_BETTER = True  # for every quantity scored by it (harness.metrics.PREFERENCE_METRICS)


class PreferenceAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: score margins (chosen minus rejected); references: 1 (chosen is preferred)",
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        margins = np.asarray(predictions, dtype=float)
        margins = margins[np.isfinite(margins)]  # a pair that could not be scored is no loss, and no win
        if not len(margins):
            return {"accuracy": float("nan"), "margin": float("nan")}
        wins = np.where(margins > 0, 1.0, np.where(margins == 0, 0.5, 0.0))
        return {"accuracy": float(wins.mean()), "margin": float(margins.mean())}
