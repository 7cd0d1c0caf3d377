"""The reward online RL objectives (PPO, RLOO, GRPO) train against: a verifiable answer check or a reward run.

``objective.reward=verifiable`` scores a completion 1 when the answer extracted
from it (``task.answer_pattern``) equals the task's reference answer, else 0.
``objective.reward=model`` scores it with the frozen reward model of a
successful ``objective=reward`` run kept with ``keep_artifacts=true``
(``objective.reward_run=<run_id>``). That checkpoint is checked against the
architecture its record describes before any weights load, so a policy is
never trained against another model than the one reported. (The objective
that *trains* a reward model is ``reward.py``.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import export, records
from harness.config import ConfigError
from harness.data.answers import extract_answer
from harness.objectives.generation import rewards


def check_reward_settings(settings: dict[str, Any], cfg) -> None:
    """The reward of an online RL objective (PPO, RLOO, GRPO): a verifiable answer check or a reward run."""
    source = settings.get("reward")
    if source not in ("verifiable", "model"):
        raise ConfigError("objective.reward", f"got {source!r}; allowed: verifiable, model")
    if source == "verifiable" and not cfg.task.get("answer_column"):
        raise ConfigError("objective.reward", "verifiable needs a task with an answer_column; use reward=model")
    if source == "model":
        reward_run_record(cfg, settings.get("reward_run"))


def reward_run_record(cfg, run_id: str | None) -> dict[str, Any]:
    """The record of the reward run a policy is trained against; it must have succeeded and kept a model
    whose tensors are exactly those its config describes (checked from the file's header, no weights read)."""
    if not run_id:
        raise ConfigError(
            "objective.reward_run", "must name the run_id of an objective=reward run (keep_artifacts=true)"
        )
    record = records.read_record(records.record_path(cfg.results_dir, run_id))
    if record is None or record.get("status") != "success" or record.get("objective") != "reward":
        raise ConfigError(
            "objective.reward_run", f"no successful objective=reward run {run_id!r} in {cfg.results_dir}/runs"
        )
    folder = record.get("artifact_dir")
    if not folder or not Path(folder).is_dir():
        raise ConfigError("objective.reward_run", f"run {run_id} kept no model; rerun it with keep_artifacts=true")
    _check_checkpoint(record)
    return record


def _check_keys(expected: set[str], found: set[str], where: Path) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise ConfigError(
            "objective.reward_run",
            f"{where} does not match the reward model its record describes: {len(missing)} tensors missing "
            f"{missing[:2]}, {len(unexpected)} unexpected {unexpected[:2]}",
        )


def _check_checkpoint(record: dict[str, Any]) -> None:
    """The kept file's tensor names (from its header) against those the record's architecture and method
    save, in whichever of harness.export's formats it is (PEFT adapter, full model, trained tensors)."""
    from omegaconf import OmegaConf

    folder = Path(record["artifact_dir"])
    try:
        path, found = export.saved_keys(folder)
    except export.ArtifactError as error:
        raise ConfigError("objective.reward_run", str(error)) from None
    _check_keys(export.expected_keys(OmegaConf.create(record["config"]), export.artifact_kind(folder)), found, path)


def verifiable_scores(task, completions: list[str], answers: list[Any]) -> list[float]:
    """1 when the answer extracted from a completion equals its reference answer, else 0."""
    pattern = task.get("answer_pattern")
    return [float(extract_answer(c, pattern) == str(a).strip()) for c, a in zip(completions, answers, strict=True)]


def verifiable_reward(task):
    def score(batch, completions: list[str]) -> list[float]:
        return verifiable_scores(task, completions, batch["answer"])

    return score


def load_reward_model(cfg, run_id: str):
    """The frozen reward model of a successful ``objective=reward`` run kept with ``keep_artifacts=true``.

    Its checkpoint's tensor names were checked against the architecture before
    anything loaded (``reward_run_record``): a file holding other tensors, or
    missing some, never loads. A tensor of the right name but another shape
    (another rank) fails in PyTorch's own load, which checks shapes. It is
    loaded by harness.export, the base unquantized.
    """
    record = reward_run_record(cfg, run_id)
    model, _ = export.load_run(record, quantized=False)
    return model.requires_grad_(False), record


def model_reward(reward_model, tokenizer, batch_size: int):
    def score(batch, completions: list[str]) -> list[float]:
        return rewards(reward_model, tokenizer, list(batch["prompt"]), completions, batch_size)

    return score
