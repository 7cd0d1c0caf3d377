"""Matthews correlation coefficient (multiclass form of Gorodkin, 2004), GLUE's CoLA metric."""

import evaluate
import numpy as np

from ._classification import classification_info

HIGHER_IS_BETTER = True


class MatthewsCorrelation(evaluate.Metric):
    def _info(self):
        return classification_info(__doc__)

    def _compute(self, predictions, references):
        predicted, actual = np.asarray(predictions), np.asarray(references)
        classes = np.union1d(predicted, actual)
        confusion = np.array([[np.sum((actual == a) & (predicted == p)) for p in classes] for a in classes], float)
        n, correct = confusion.sum(), np.trace(confusion)
        predicted_totals, actual_totals = confusion.sum(axis=0), confusion.sum(axis=1)
        covariance = correct * n - predicted_totals @ actual_totals
        scale = np.sqrt((n**2 - predicted_totals @ predicted_totals) * (n**2 - actual_totals @ actual_totals))
        return {"matthews_correlation": float(covariance / scale) if scale else 0.0}
