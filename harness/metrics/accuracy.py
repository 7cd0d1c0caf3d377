"""Accuracy: fraction of predictions equal to the reference label."""

import evaluate
import numpy as np

from ._classification import classification_info

HIGHER_IS_BETTER = True


class Accuracy(evaluate.Metric):
    def _info(self):
        return classification_info(__doc__)

    def _compute(self, predictions, references):
        return {"accuracy": float(np.mean(np.asarray(predictions) == np.asarray(references)))}
