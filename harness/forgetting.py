"""What training cost the model elsewhere: forgetting on general text, retention on a second task.

A method that wins on its task by wrecking the model's language modelling is
not the better method; PEFT's method comparison reports forgetting beside
accuracy for that reason. Every causal-LM run scores a fixed sample of general
text (``conf/forgetting/``: WikiText-2 by default) before training and after,
as the per-token cross-entropy of the model's own tokenisation, and records
both and their difference. "Before" is the starting model as it loaded,
before the method wraps it (what a method does at wrapping time, such as
prompt tuning's virtual tokens, counts as change). The text is read and cut
into windows before any weights load, and tuning trials score none. Both
passes run outside the budget's clock and the memory meter's windows, so they
change no other figure of the record.

The per-token figure is the mean over every predicted token of the sample,
not a mean of per-window means (the last window is shorter), with padding
positions masked out of the targets and the logits shifted by one against the
labels: the two places peers' forgetting numbers are known to go wrong, both
tested. The windows hold ``tokens`` tokens in all; each window's first token
has no context and is not scored.

An encoder classification run has no language-modelling head to score; with
``retention_task=<task>`` set, its final model is scored on that task's test
split (same label names required, so the trained head means the same there).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from harness.config import ConfigError, did_you_mean, root_cause_line
from harness.paths import project_path

if TYPE_CHECKING:  # the command line checks the spec (validate_retention) without importing torch
    import torch
    from torch import nn

# WikiText's tokenised files write a hyphen, comma or point between digits or words as " @-@ ", " @,@ ", " @.@ ".
WIKITEXT_ESCAPES = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))
UNESCAPES = {"wikitext": WIKITEXT_ESCAPES, None: ()}
# Characters read per token wanted, to tokenise only the start of a long text (doubled until it suffices).
CHARACTERS_PER_TOKEN = 6


@dataclass(frozen=True)
class GeneralText:
    """A ``conf/forgetting/`` spec: where the text comes from and how much of it is scored."""

    name: str
    hub: dict[str, Any] | None = None  # path, name, split, column (datasets.load_dataset)
    local: dict[str, Any] | None = None  # root (${data_root}), file under it, unescape
    tokens: int = 4096
    sequence_length: int = 256
    batch_size: int = 8

    @classmethod
    def from_config(cls, node: DictConfig | None) -> GeneralText | None:
        """The spec, or None when forgetting is off (``forgetting=none``)."""
        if node is None or node.get("name") in (None, "none"):
            return None
        plain = OmegaConf.to_container(node, resolve=True)
        unknown = sorted(set(plain) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"forgetting.{unknown[0]}", f"unknown key; allowed: {', '.join(cls.__dataclass_fields__)}"
            )
        spec = cls(**plain)
        spec.check()
        return spec

    def check(self) -> None:
        # A window needs a token of context and one to score; a batch needs one window.
        for key, least in (("tokens", 2), ("sequence_length", 2), ("batch_size", 1)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"forgetting.{key}", f"must be an integer >= {least} (got {value!r})")
        if (self.local or {}).get("unescape") not in UNESCAPES:
            raise ConfigError("forgetting.local.unescape", f"allowed: {', '.join(str(k) for k in UNESCAPES)}")
        if self.local_file is None and not (self.hub or {}).get("path"):
            raise ConfigError("forgetting.hub.path", "names no dataset, and no local.root is set (data_root=...)")

    @property
    def local_file(self) -> Path | None:
        """The local copy (``data_root``/file) when a data root is set; None reads the Hub."""
        local = self.local or {}
        return project_path(local["root"]) / local["file"] if local.get("root") and local.get("file") else None

    def identity(self) -> dict[str, Any]:
        """What makes two forgetting figures comparable: the sample's size and cut (where it was read from is not)."""
        return {"name": self.name, "tokens": self.tokens, "sequence_length": self.sequence_length}


@dataclass(frozen=True)
class TextSample:
    """The general text as read, its content hash and where it came from."""

    text: str
    sha256: str
    source: str


def read_text(spec: GeneralText) -> TextSample:
    """The whole text, from the local copy when a data root is set, else the Hub; checked before weights load."""
    path = spec.local_file
    if path is not None:
        from harness.data.load import check_data_file

        check_data_file(path, "forgetting.local.file")
        text = path.read_text(encoding="utf-8")
        for escaped, plain in UNESCAPES[(spec.local or {}).get("unescape")]:
            text = text.replace(escaped, plain)
        source = str(path)
    else:
        text, source = _hub_text(spec.hub or {})
    return TextSample(text, hashlib.sha256(text.encode()).hexdigest(), source)


def _hub_text(hub: dict[str, Any]) -> tuple[str, str]:
    import datasets

    try:
        rows = datasets.load_dataset(hub["path"], hub.get("name"), split=hub.get("split", "test"))
    except Exception as error:  # offline, unknown dataset: one line naming the key and the way out
        raise ConfigError(
            "forgetting.hub",
            f"cannot load {hub['path']!r} (offline? set data_root=... for the local copy, or forgetting=none): "
            f"{root_cause_line(error)}",
        ) from None
    column = hub.get("column", "text")
    if column not in rows.column_names:
        raise ConfigError(
            "forgetting.hub.column", f"{column!r} is not a column; allowed: {', '.join(rows.column_names)}"
        )
    return "".join(rows[column]), f"{hub['path']}/{hub.get('name')}:{hub.get('split', 'test')}"


def token_windows(tokenizer, text: str, tokens: int, sequence_length: int) -> list[list[int]]:
    """The first ``tokens`` tokens of ``text`` in the model's own tokenisation, cut into windows of
    ``sequence_length`` (the last may be shorter). No special tokens: the text is scored as it is."""
    characters = tokens * CHARACTERS_PER_TOKEN
    while True:
        ids = tokenizer(text[:characters], add_special_tokens=False)["input_ids"]
        if len(ids) > tokens or characters >= len(text):
            break
        characters *= 2
    if len(ids) < tokens:
        raise ConfigError(
            "forgetting.tokens", f"the text has {len(ids)} tokens in this model's tokenisation, fewer than {tokens}"
        )
    ids = ids[:tokens]
    return [ids[start : start + sequence_length] for start in range(0, tokens, sequence_length)]


def padded_batch(windows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows right-padded to the longest, with the attention mask of their real tokens."""
    import torch

    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    for row, window in enumerate(windows):
        ids[row, : len(window)] = torch.tensor(window, dtype=torch.long)
        mask[row, : len(window)] = 1
    return ids, mask


def token_losses(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each real token's negative log-likelihood given the tokens before it, in order, padding excluded.

    Position ``t``'s logits predict token ``t + 1``; a target that is padding is no token. ``logits`` may
    carry extra leading positions (prompt tuning's virtual tokens): the last ``ids.shape[1]`` are the text's.
    One row at a time in fp32, so the copy is one window's logits (a 128k vocabulary's batch would be GBs).
    """
    import torch

    logits = logits[:, -ids.shape[1] :]
    parts = []
    for row in range(ids.shape[0]):
        real = mask[row, 1:].bool()
        losses = torch.nn.functional.cross_entropy(logits[row, :-1].float(), ids[row, 1:], reduction="none")
        parts.append(losses[real])
    return torch.cat(parts)


def score(model: nn.Module, windows: list[list[int]], batch_size: int, pad_id: int) -> torch.Tensor:
    """Every scored token's loss under ``model`` (eval mode for the pass, its mode restored after)."""
    import torch

    device = next(p.device for p in model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _losses(model, windows, batch_size, pad_id, device)
    finally:
        model.train(was_training)


def _losses(model: nn.Module, windows: list[list[int]], batch_size: int, pad_id: int, device) -> torch.Tensor:
    import torch

    parts = []
    for start in range(0, len(windows), batch_size):
        ids, mask = padded_batch(windows[start : start + batch_size], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        parts.append(token_losses(logits, ids, mask).cpu())
    return torch.cat(parts)


class ForgettingProbe:
    """Scores one run's model on the general text before and after training, and says what changed.

    "Before" is the starting model as it loaded, before the method wraps it (:meth:`before` is the run's
    ``on_loaded`` listener): whatever a method does at wrapping time (prompt tuning's virtual tokens, PiSSA or
    LoftQ rewriting base weights) is then part of what the run changed. A failure of either pass is recorded in
    the block (``error``) rather than failing a run that trained.
    """

    def __init__(self, text: ScoredText, device: torch.device):
        self.text, self.device = text, device
        self.before_losses: torch.Tensor | None = None
        self.error: str | None = None
        self.seconds = 0.0

    def before(self, model: nn.Module) -> None:
        if self.before_losses is not None or self.error is not None:
            return  # told once: the policy, not a second model loaded beside it
        _to_run_device(model, self.device)
        self.before_losses = self._score(model)

    def after(self, model: nn.Module, trainer: Any = None) -> dict[str, Any]:
        after = self._score(model) if self.before_losses is not None else None
        if self.error is not None:
            return {"error": self.error}
        return forgetting_fields(self.before_losses, after, self.text.scored_per_window()) | {
            "tokens": self.text.spec.tokens,
            "sequence_length": self.text.spec.sequence_length,
            "windows": len(self.text.windows),
            "text": self.text.spec.name,
            "text_sha256": self.text.sample.sha256,
            "source": self.text.sample.source,
            "seconds": self.seconds,
        }

    def _score(self, model: nn.Module) -> torch.Tensor | None:
        from harness import distributed
        from harness.measure import Stopwatch

        try:
            with Stopwatch(self.device) as clock:
                losses = score(model, self.text.windows, self.text.spec.batch_size, self.text.pad_id)
        except Exception as error:  # out of memory on a long text: the block's failure, not the run's
            if distributed.world_size() > 1:
                raise  # every rank must take the same path through the collectives that follow
            self.error = f"{type(error).__name__}: {error}"
            return None
        self.seconds += clock.seconds
        return losses


@dataclass(frozen=True)
class ScoredText:
    """The general text cut into the model's token windows, ready to score (made before any weights load)."""

    spec: GeneralText
    sample: TextSample
    windows: list[list[int]]
    pad_id: int

    @classmethod
    def of(cls, spec: GeneralText, sample: TextSample, tokenizer) -> ScoredText:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return cls(spec, sample, token_windows(tokenizer, sample.text, spec.tokens, spec.sequence_length), pad_id)

    def scored_per_window(self) -> list[int]:
        """Tokens scored in each window: all but its first, which has no context."""
        return [len(w) - 1 for w in self.windows]


def window_stderr(difference: torch.Tensor, per_window: list[int]) -> float | None:
    """The standard error of the mean of ``difference`` (tokens in window order), clustered by window."""
    windows = len(per_window)
    if windows < 2:
        return None
    sums = [float(part.sum()) for part in difference.split(per_window)]
    mean, total = float(difference.mean()), float(sum(per_window))
    spread = sum((d - mean * n) ** 2 for d, n in zip(sums, per_window, strict=True))
    return math.sqrt(windows / (windows - 1) * spread) / total


def _to_run_device(model: nn.Module, device: torch.device) -> None:
    """Score where the run trains (the trainer would move the model there next); a quantized model was placed
    on its device at load time and cannot be moved."""
    if (
        device.type != "cpu"
        and getattr(model, "hf_device_map", None) is None
        and not getattr(model, "is_quantized", False)
    ):
        model.to(device)


def forgetting_fields(before: torch.Tensor, after: torch.Tensor, per_window: list[int]) -> dict[str, Any]:
    """Per-token cross-entropy (nats) before and after, their difference (positive: the model got worse on the
    text), and the standard error of that difference.

    Tokens of one window are not independent draws (a passage the model now gets wrong costs it many tokens
    in a row), so the error is the cluster-robust one over windows: the spread of each window's summed
    difference around its share of the mean, ``sqrt(W / (W - 1) * sum((d_w - mean * n_w)^2)) / N``.
    """
    difference = after.double() - before.double()
    n = difference.numel()
    return {
        "before_ce": float(before.double().mean()),
        "after_ce": float(after.double().mean()),
        "forgetting": float(difference.mean()),
        "forgetting_stderr": window_stderr(difference, per_window),
        "scored_tokens": n,
    }


@dataclass(frozen=True)
class SecondTask:
    """The retention task of an encoder run: its composed config and its test rows."""

    task: DictConfig
    test_rows: Any
    test_sha256: str


@dataclass(frozen=True)
class RetentionInputs:
    """What :func:`prepare` read for the after-training checks; a part that is off is None."""

    general_text: ScoredText | None = None
    second_task: SecondTask | None = None

    def identity(self) -> dict[str, Any]:
        """What the run settles beyond its config: the scored text's cut and content, the second task's test data.
        Empty when nothing is measured, so runs that measure nothing keep their run_id."""
        settled: dict[str, Any] = {}
        if self.general_text is not None:
            settled["forgetting"] = {
                **self.general_text.spec.identity(),
                "text_sha256": self.general_text.sample.sha256,
            }
        if self.second_task is not None:
            settled["retention"] = {"task": self.second_task.task.name, "test_sha256": self.second_task.test_sha256}
        return settled


def prepare(cfg: DictConfig, head: str, task_type_of_training: str) -> RetentionInputs:
    """Read (before any weights load) what the run will be scored on after training: the general text for a
    causal LM, cut into its tokenizer's windows, the retention task's test split for a classifier with
    ``retention_task`` set. A tuning trial scores no general text: its forgetting would choose nothing
    (the study selects on validation quality), and the finals re-run the chosen configuration with it."""
    general = None
    if head == "causal_lm" and cfg.get("role", "run") != "trial":
        spec = GeneralText.from_config(cfg.get("forgetting"))
        if spec is not None:
            from harness.models import load_tokenizer

            general = ScoredText.of(spec, read_text(spec), load_tokenizer(cfg.model))
    second = None
    if cfg.get("retention_task") is not None:
        second = _second_task(cfg, head, task_type_of_training)
    return RetentionInputs(general, second)


def check_retention_name(cfg: DictConfig) -> None:
    """``retention_task`` names a task of tasks/ (cheap: the command line checks it before Hydra writes)."""
    from harness.data.catalog import task_names

    name = cfg.get("retention_task")
    if name is None:
        return
    names = task_names()
    if name not in names:
        raise ConfigError(
            "retention_task", f"no task {name!r}{did_you_mean(name, names)}; allowed: null, {', '.join(names)}"
        )


def _second_task(cfg: DictConfig, head: str, task_type: str) -> SecondTask:
    from harness import data

    check_retention_name(cfg)
    if head != "sequence_classification" or task_type != "classification":
        raise ConfigError(
            "retention_task", "applies to classification runs (causal-LM runs measure forgetting: forgetting=...)"
        )
    task = compose_task(cfg.retention_task, cfg.get("data_root"))
    if task.type != "classification":
        raise ConfigError(
            "retention_task", f"{task.name} is a {task.type} task; a classifier is scored on a classification task"
        )
    if list(task.label_names) != list(cfg.task.label_names):
        raise ConfigError(
            "retention_task",
            f"{task.name}'s labels {list(task.label_names)} differ from {cfg.task.name}'s {list(cfg.task.label_names)}; "
            "the trained head only means something on a task with the same labels",
        )
    splits, sha256 = data.load_fingerprinted(task)
    return SecondTask(task, splits["test"], sha256["test"])


def compose_task(name: str, data_root: str | None) -> DictConfig:
    """A task's config as ``task=<name>`` composes it, resolved with this run's ``data_root``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from harness.data.catalog import register_tasks
    from harness.paths import config_dir

    register_tasks()  # the task group lives in Hydra's ConfigStore (harness.data.catalog)
    if GlobalHydra.instance().is_initialized():
        full = compose("config", overrides=[f"task={name}"])
    else:
        with initialize_config_dir(config_dir(), version_base=None):
            full = compose("config", overrides=[f"task={name}"])
    full.data_root = data_root
    return OmegaConf.create(OmegaConf.to_container(full.task, resolve=True))


class SecondTaskProbe:
    """Scores an encoder run's final model on the retention task's test split (capped as the run's test split is),
    through the run's own trainer, outside the memory meter's windows and the evaluation clock."""

    def __init__(self, second: SecondTask, cfg: DictConfig, device: torch.device):
        self.second, self.cfg, self.device = second, cfg, device

    def before(self, model: nn.Module) -> None:
        """Nothing: the new head is untrained before the first step, so its score there is chance by design."""

    def after(self, model: nn.Module, trainer: Any) -> dict[str, Any]:
        from datasets import DatasetDict

        from harness import budget, data
        from harness.measure import Stopwatch
        from harness.objectives.base import prefixed_scores
        from harness.objectives.cls import by_length, compute_metrics_for

        task, cap = self.second.task, self.cfg.budget.get("max_eval_samples")
        tokenized = data.tokenize(
            DatasetDict({"train": self.second.test_rows}),  # tokenize reads the columns off a "train" split
            trainer.processing_class,  # the run's own tokenizer, as its trainer holds it
            budget.sequence_length(self.cfg),
            {"train": self.second.test_sha256},
        )
        rows = by_length(data.cap_eval(tokenized["train"], cap))
        trainer.memory_meter = None  # the run's memory windows are closed: this pass is none of theirs
        trained_task_metrics, trainer.compute_metrics = trainer.compute_metrics, compute_metrics_for(task)
        try:
            with Stopwatch(self.device) as clock:
                scores = trainer.evaluate(rows, metric_key_prefix="retention")  # scored by the second task's metrics
        finally:
            trainer.compute_metrics = trained_task_metrics
        metrics = prefixed_scores(scores, "retention")
        primary = task.primary_metric
        return {
            "task": task.name,
            "split": "test",
            "examples": len(rows),
            "metrics": metrics,
            "primary_metric": {"name": primary, "value": metrics.get(primary)},
            "test_sha256": self.second.test_sha256,
            "seconds": clock.seconds,
        }
