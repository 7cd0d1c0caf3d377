"""Exact match: fraction of extracted answers equal to the reference answer (after trimming whitespace)."""

import datasets
import evaluate
import numpy as np

HIGHER_IS_BETTER = True


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions, references: answer strings",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        equal = [str(p).strip() == str(r).strip() for p, r in zip(predictions, references, strict=True)]
        return {"exact_match": float(np.mean(equal)) if equal else 0.0}
