"""Schema shared by the classification metrics: int class ids in, floats out.

Loaded by evaluate as a relative import of each metric module (it copies it
beside them). It holds a function, not a base class, because evaluate takes
the first Metric subclass it finds in a module as the metric. The leading
underscore keeps it out of the metric list.
"""

import datasets
import evaluate


def classification_info(description: str) -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description="predictions, references: int class ids",
        features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
    )
