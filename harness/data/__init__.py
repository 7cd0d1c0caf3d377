"""Task stage: a task's spec, its data loaded and normalised, tokenised and fingerprinted.

One module per concern:

* :mod:`~harness.data.spec`: the typed task spec (every key, its default, its checks) and project-relative paths;
* :mod:`~harness.data.catalog`: the tasks in ``tasks/``, registered as Hydra's ``task`` group;
* :mod:`~harness.data.load`: sources (generator, local files, local copy, Hub), splits, columns, labels;
* :mod:`~harness.data.prompts`: prompt templates and dialogues split into prompt and answers;
* :mod:`~harness.data.answers`: the answer inside a generation or a reference;
* :mod:`~harness.data.tokens`: tokenisation of classification splits;
* :mod:`~harness.data.fingerprint`: a content hash of each split;
* :mod:`~harness.data.cache`: loaded and tokenised splits kept on disk for a sweep's later runs.

The stage's interface to a run is re-exported here.
"""

from harness.data.fingerprint import fingerprint
from harness.data.load import cap_eval, load_fingerprinted, load_task
from harness.data.tokens import tokenize

__all__ = ["cap_eval", "fingerprint", "load_fingerprinted", "load_task", "tokenize"]
