"""The tasks: one spec (``<name>.yaml``) and one card (``<name>.md``) each, and the embedded tasks' generators.

Hydra's ``task`` group is this folder (``harness.data.catalog`` registers it), so
``task=<name>`` names a file here. Files starting with ``_`` are bases a task
inherits (``defaults: [_local_classification, _self_]``); the keys a spec may
set, their defaults and checks are ``harness.data.spec.TaskSpec``'s. This is a
package so that the generators are importable (``_target_:
tasks.generators.synthetic.sentiment``) and the YAML files ship beside them.
"""
