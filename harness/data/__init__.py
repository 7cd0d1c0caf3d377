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

The stage's interface to a run is re-exported here (the content hash is ``harness.data.fingerprint.fingerprint``:
the module's name would shadow a re-export once the module is imported).
The names are resolved on first use (PEP 562): importing a light module of the stage (``spec``, ``catalog``)
must not import ``datasets`` and torch, so that the command line answers a bad input within a second or two.
"""

from importlib import import_module
from typing import Any

EXPORTS = {
    "cap_eval": "harness.data.load",
    "load_fingerprinted": "harness.data.load",
    "load_task": "harness.data.load",
    "tokenize": "harness.data.tokens",
}
__all__ = list(EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module 'harness.data' has no attribute {name!r}")
    return getattr(import_module(EXPORTS[name]), name)
