"""Binary F1 of the positive class (label id 1), as GLUE reports it for MRPC and QQP."""

import evaluate
import numpy as np

from ._classification import classification_info

HIGHER_IS_BETTER = True


class F1(evaluate.Metric):
    def _info(self):
        return classification_info(__doc__)

    def _compute(self, predictions, references, pos_label=1):
        predicted, actual = np.asarray(predictions) == pos_label, np.asarray(references) == pos_label
        tp = float(np.sum(predicted & actual))
        denominator = float(np.sum(predicted) + np.sum(actual))
        return {"f1": 2 * tp / denominator if denominator else 0.0}
