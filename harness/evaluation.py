"""``harness-eval RESULTS_DIR --tasks TASK[,TASK]``: standard benchmarks on the kept models of finished runs.

lm-evaluation-harness does the evaluating: its task configs (prompt, few-shot examples, generation, filters,
metrics, standard errors) and its Hugging Face model class (``HFLM``), handed the model and tokenizer that
:func:`harness.export.load_run` loads from a run kept with ``keep_artifacts=true``. The project ships its own
task YAMLs in ``tasks/lm_eval/`` (lm-eval's ``TaskManager(include_path=...)`` finds them beside lm-eval's
own); ``--data-root DIR`` points those that name a local copy (``metadata.local.folder``) at
``DIR/<folder>/<split>.jsonl``, the layout of the harness's ``data_root``, and without it they read the Hub.

The scores of each run go to a sidecar beside its record, ``runs/<run_id>.lm_eval.json``
(:func:`harness.records.sidecar_path`, written atomically, one entry per task so that evaluating another
task later keeps the first), which ``harness-report`` shows as extra columns. The record itself is never
rewritten. Each run's sidecar is written as soon as that run is scored, so a failure on one run loses no
other's. Bad input (an unknown run, a run without a kept model, an unknown task, a missing data file) is one
line and exit status 2, before any model loads.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from harness import export, records
from harness.paths import project_path

SHIPPED_FOLDER = "lm_eval"  # inside the tasks package


class EvalError(ValueError):
    """Bad input: one line naming the option and the fix, before any model loads."""


# --- tasks --------------------------------------------------------------------------------------------------


def shipped_tasks_dir() -> Path:
    """The project's lm-eval task YAMLs (a checkout's ``tasks/lm_eval/``, or the installed package's)."""
    return Path(str(resources.files("tasks").joinpath(SHIPPED_FOLDER)))


def shipped_configs() -> dict[str, dict[str, Any]]:
    """Each shipped task's YAML by task name (plain YAML: the project's own files use no ``!function``)."""
    configs = (yaml.safe_load(path.read_text()) for path in sorted(shipped_tasks_dir().glob("*.yaml")))
    return {config["task"]: config for config in configs}


def task_manager(names: list[str]):
    """lm-eval's TaskManager over the shipped tasks, and lm-eval's own only when a name is not shipped (indexing
    lm-eval's fourteen thousand task files takes seconds)."""
    from lm_eval.tasks import TaskManager

    only_shipped = set(names) <= set(shipped_configs())
    return TaskManager(include_path=str(shipped_tasks_dir()), include_defaults=not only_shipped)


def task_specs(names: list[str], manager, data_root: Path | None, num_fewshot: int | None) -> list[str | dict]:
    """What lm-eval is asked to run: each task's name, or with ``data_root`` its shipped config reading the local
    copy. Unknown names and missing files are EvalErrors."""
    shipped = shipped_configs()
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise EvalError(
            f"--tasks: unknown lm-eval task {unknown[0]!r}; shipped here: {', '.join(shipped)} "
            f"(in {shipped_tasks_dir()}), or any of lm-eval's own (`lm-eval ls tasks`)"
        )
    if data_root is None:
        return list(names)
    return [_local_spec(name, shipped.get(name), data_root, num_fewshot) for name in names]


def _local_spec(name: str, config: dict | None, data_root: Path, num_fewshot: int | None) -> dict:
    """The shipped config with its dataset replaced by ``<data_root>/<folder>/<split>.jsonl`` for each split it
    reads (the test split, and the few-shot split when it draws examples)."""
    local = ((config or {}).get("metadata") or {}).get("local")
    if not local:
        raise EvalError(f"--data-root: task {name!r} names no local copy (metadata.local); run it without --data-root")
    folder = data_root / local["folder"]
    shots = config.get("num_fewshot", 0) if num_fewshot is None else num_fewshot
    splits = {config["test_split"], *([config["fewshot_split"]] if shots and config.get("fewshot_split") else [])}
    files = {split: folder / f"{split}.jsonl" for split in sorted(splits)}
    missing = [path for path in files.values() if not path.is_file()]
    if missing:
        raise EvalError(f"--data-root: {missing[0]} does not exist (task {name} reads {folder}/<split>.jsonl)")
    data_files = {split: str(path.resolve()) for split, path in files.items()}
    spec = {**config, "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": data_files}}
    if not shots:  # no examples drawn: the splits they come from are not read (and need not exist)
        spec.update(training_split=None, fewshot_split=None)
    return spec


def check_data(specs: list[str | dict], manager) -> None:
    """Build every task once, which loads its data: an unreachable Hub dataset fails here, before any model."""
    for spec in specs:
        name = spec if isinstance(spec, str) else spec["task"]
        try:
            manager.load([spec])
        except Exception as error:  # noqa: BLE001 - any loading failure, reported as one line
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise EvalError(
                f"--tasks: {name}: its data cannot be loaded ({first}); offline, --data-root DIR reads local copies"
            ) from None


# --- runs ---------------------------------------------------------------------------------------------------


def chosen_runs(results_dir: Path, run_ids: list[str] | None) -> list[tuple[dict[str, Any], Path]]:
    """The named runs (each must have succeeded and kept a causal LM), else every such run in the folder."""
    if run_ids:
        chosen = []
        for run_id in run_ids:
            try:
                record, folder = export.kept_run(results_dir, run_id)
            except export.ArtifactError as error:
                raise EvalError(f"--runs: {error}") from None
            if not _generates(record):
                raise EvalError(
                    f"--runs: run {run_id} trained a scorer (objective {record.get('objective')}), not a causal LM; "
                    "lm-eval's tasks are scored on a language model's own outputs"
                )
            chosen.append((record, folder))
        return chosen
    found = [r for r in records.load_records(results_dir) if r.get("status") == "success" and r.get("artifact_dir")]
    chosen = [kept for kept in (_kept(results_dir, r) for r in found if _generates(r)) if kept is not None]
    if not chosen:
        raise EvalError(
            f"RESULTS_DIR: no successful causal-LM run in {records.runs_dir(results_dir)} kept its model; "
            "run with keep_artifacts=true"
        )
    return chosen


def _kept(results_dir: Path, record: dict[str, Any]) -> tuple[dict[str, Any], Path] | None:
    try:
        return export.kept_run(results_dir, record["run_id"])
    except export.ArtifactError:  # its kept folder is gone: not chosen when runs are not named
        return None


def _generates(record: dict[str, Any]) -> bool:
    """Whether the run's model is a causal LM (its objective's head), from its config: no weights read."""
    try:
        return export.objective_of(OmegaConf.create(record["config"])).head == "causal_lm"
    except Exception:  # a record whose config no longer builds: not one this version can evaluate
        return False


# --- evaluating ---------------------------------------------------------------------------------------------


def score(lm, specs: list[str | dict], manager, limit: int | None, num_fewshot: int | None) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` on an lm-eval model (``HFLM`` for a kept run): its results, samples logged."""
    from lm_eval import simple_evaluate

    return simple_evaluate(
        model=lm, tasks=specs, task_manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=True
    )


def evaluate_run(record: dict[str, Any], folder: Path, specs, manager, args: argparse.Namespace) -> dict[str, Any]:
    """A kept run's model through lm-eval's HFLM: the sidecar entries of each task."""
    import torch
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = export.load_run(record, folder)
    if torch.cuda.is_available() and model.device.type == "cpu":
        model.to("cuda")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)
    results = score(lm, specs, manager, args.limit, args.num_fewshot)
    return task_entries(results, args.limit, args.batch_size)


def task_entries(results: dict[str, Any], limit: int | None, batch_size: int) -> dict[str, dict[str, Any]]:
    """Per task, what lm-eval measured: every metric under every filter with its standard error, how many
    examples were scored (of how many), the few-shot count, where the data came from, and each example's
    generation with what each filter extracted from it and its score (so a score can be traced to outputs)."""
    version, when = metadata.version("lm_eval"), datetime.now(timezone.utc).isoformat()
    entries = {}
    for task, measured in results["results"].items():
        if task not in results["configs"]:
            continue  # a group's aggregate (lm-eval lists it among the results): its member tasks are kept
        config = results["configs"][task]
        higher = results.get("higher_is_better", {}).get(task, {})
        scores = []
        for key, value in measured.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or metric == "alias":
                continue
            stderr = measured.get(f"{metric}_stderr,{filter_name}")
            scores.append(
                {
                    "metric": metric,
                    "filter": filter_name,
                    "value": value,
                    "stderr": stderr if isinstance(stderr, int | float) else None,  # "N/A" for one example
                    "higher_is_better": higher.get(metric),
                }
            )
        counts = results["n-samples"][task]
        entries[task] = {
            "task": task,
            "alias": measured.get("alias", task),
            "scores": scores,
            "limit": limit,
            "n_samples": counts["effective"],
            "n_available": counts["original"],
            "num_fewshot": results.get("n-shot", {}).get(task),
            "batch_size": batch_size,
            "data": _data(config),
            "task_version": results.get("versions", {}).get(task),
            "lm_eval_version": version,
            "evaluated_at": when,
            "samples": _samples(results.get("samples", {}).get(task, [])),
        }
    return entries


def _data(config: dict[str, Any]) -> dict[str, Any]:
    """Where the examples came from: the Hub dataset, or the local files with their SHA-256 (a local copy can
    change under the same path)."""
    from harness.data.cache import file_digest

    found = {k: config.get(k) for k in ("dataset_path", "dataset_name", "dataset_kwargs", "test_split")}
    files = ((config.get("dataset_kwargs") or {}).get("data_files")) or {}
    if isinstance(files, dict):
        found["data_sha256"] = {split: file_digest(Path(path)) for split, path in files.items() if Path(path).is_file()}
    return found


def _samples(logged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """lm-eval logs one sample per example and filter; kept here one per example: the raw generation, what each
    filter extracted, and each filter's per-example score (the prompt is left out: the task rebuilds it)."""
    by_doc: dict[int, dict[str, Any]] = {}
    for sample in logged:
        entry = by_doc.setdefault(
            sample["doc_id"],
            {"doc_id": sample["doc_id"], "target": sample.get("target"), "generation": _first(sample["resps"])},
        )
        name = sample.get("filter", "none")
        entry.setdefault("filtered", {})[name] = _first(sample.get("filtered_resps"))
        for metric in sample.get("metrics", []):
            entry.setdefault(metric, {})[name] = sample.get(metric)
    return [by_doc[doc] for doc in sorted(by_doc)]


def _first(value: Any) -> Any:
    """lm-eval nests a generation as [[text]] (repeats) or [text] (after a filter)."""
    while isinstance(value, list) and value:
        value = value[0]
    return value


def write_scores(results_dir: Path, record: dict[str, Any], entries: dict[str, dict[str, Any]]) -> Path:
    """Merge ``entries`` into the run's sidecar (other tasks' scores kept) and write it atomically. Each entry
    names the training it scored (the record's ``finished_at``): a forced rerun's record differs, and the
    report leaves out scores of a model the rerun replaced."""
    run_id = record["run_id"]
    path = records.sidecar_path(results_dir, run_id)
    found = records.inspect_json(path, ("run_id", "tasks")).record or {"run_id": run_id, "tasks": {}}
    stamped = {task: {**entry, "record_finished_at": record.get("finished_at")} for task, entry in entries.items()}
    sidecar = {"run_id": run_id, "tasks": {**found["tasks"], **stamped}}
    records.write_record(path, sidecar)
    return path


# --- harness-eval -------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="harness-eval", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="a results folder (the one with runs/ in it)")
    parser.add_argument("--runs", nargs="+", default=None, help="run_ids (default: every kept causal-LM run)")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names, e.g. harness_gsm8k")
    parser.add_argument("--limit", type=int, default=None, help="score the first N examples of each task")
    parser.add_argument("--batch-size", type=int, default=1, help="examples per forward pass (default 1)")
    parser.add_argument("--num-fewshot", type=int, default=None, help="default: each task's own")
    parser.add_argument(
        "--data-root", type=Path, default=None, help="local copies, DIR/<folder>/<split>.jsonl (default: the Hub)"
    )
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace):
    """Everything checkable before a model loads: the options, the runs, the tasks and their data."""
    for option in ("limit", "batch_size"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise EvalError(f"--{option.replace('_', '-')}: must be a positive integer (got {value})")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise EvalError(f"--num-fewshot: must be 0 or more (got {args.num_fewshot})")
    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    if not names:
        raise EvalError("--tasks: empty; name at least one lm-eval task, e.g. harness_gsm8k")
    if not (args.results_dir / "runs").is_dir():
        raise EvalError(f"RESULTS_DIR: {args.results_dir} has no runs/ folder")
    runs = chosen_runs(args.results_dir, args.runs)
    data_root = project_path(args.data_root) if args.data_root is not None else None
    manager = task_manager(names)
    specs = task_specs(names, manager, data_root, args.num_fewshot)
    check_data(specs, manager)
    return runs, specs, manager


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        runs, specs, manager = check_args(args)
    except EvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = 0
    for record, folder in runs:
        run_id = record["run_id"]
        try:
            entries = evaluate_run(record, folder, specs, manager, args)
        except Exception as error:  # noqa: BLE001 - one run's failure is reported; the others go on
            print(f"error: run {run_id}: {type(error).__name__}: {str(error).splitlines()[0]}", file=sys.stderr)
            failed += 1
            continue
        path = write_scores(args.results_dir, record, entries)
        for entry in entries.values():
            for s in entry["scores"]:
                stderr = f" ± {s['stderr']:.4f}" if s["stderr"] is not None else ""
                print(
                    f"{run_id} {entry['task']} {s['metric']} [{s['filter']}]: {s['value']:.4f}{stderr} "
                    f"(n={entry['n_samples']})"
                )
        print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
