"""Binary F1 of the positive class (label id 1), as GLUE reports it for MRPC and QQP."""

import datasets
import evaluate
import numpy as np


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions, references: int class ids",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, pos_label=1):
        predicted, actual = np.asarray(predictions) == pos_label, np.asarray(references) == pos_label
        tp = float(np.sum(predicted & actual))
        denominator = float(np.sum(predicted) + np.sum(actual))
        return {"f1": 2 * tp / denominator if denominator else 0.0}
