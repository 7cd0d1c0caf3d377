"""Kept runs in the libraries' own formats: what ``keep_artifacts=true`` keeps, loading it back, ``harness-export``.

A kept run's folder, ``results_dir/artifacts/<run_id>`` (the record's ``artifact_dir``), holds what trained
in the format of the library that trained it:

* a PEFT method (lora, dora, ia3, prefix, ...): PEFT's adapter folder, ``adapter_config.json`` +
  ``adapter_model.safetensors`` (a scorer's new head rides in ``modules_to_save``), loaded with
  ``PeftModel.from_pretrained(base, folder)``. Its ``base_model_name_or_path`` names the base the adapter was
  trained on: the Hub id, or the local folder the weights were read from (for an embedded GGUF model, the
  harness cache's safetensors conversion of it: the dequantised weights the run trained on, not the Hub's);
* full fine-tuning: ``save_pretrained``'s model folder, ``config.json`` + ``model.safetensors``, loaded with
  ``AutoModelFor<head>.from_pretrained(folder)``;
* the harness's own methods (head, bitfit, adapter_houlsby, adapter_pfeiffer): ``trained.safetensors``, exactly
  the tensors that trained, named as in the model once the method applied (``model.named_parameters()``);
  loaded by rebuilding the base, applying the method from the record's config and
  ``load_state_dict(state, strict=False)`` (the frozen base is not in the file), which :func:`load_run` does;

and beside it, in every case, the run's tokenizer (``tokenizer.save_pretrained``). A base that was a random
draw from a config (``random_init``: the tiny test models) exists nowhere else, so it is saved too, in
``base/``, and the adapter's ``base_model_name_or_path`` names that folder; the harness's own loader rebuilds
the same draw from the run's seed. PPO trains a value model beside its policy: the policy is the folder's
model, the value model sits in ``value/`` in the same format, on the same base loaded as a one-label token
classifier (``AutoModelForTokenClassification``, ``num_labels=1``; its head is in the adapter).

``harness-export RUN_ID`` writes a kept run as a folder to take away: the adapter folder (with its base, when
random), or a plain transformers folder; ``--merge`` folds a LoRA-family adapter into its base
(``merge_and_unload``) and writes a plain transformers folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from torch import nn

from harness import compat, measure, methods, models, records
from harness.paths import is_local_path

ADAPTER_FILE, MODEL_FILE, TRAINED_FILE = "adapter_model.safetensors", "model.safetensors", "trained.safetensors"
MODEL_INDEX = "model.safetensors.index.json"  # a sharded save_pretrained
BASE_DIR = "base"  # a random-init base, saved beside its adapter or tensors
Kind = Literal["peft", "full", "trained"]


class ArtifactError(ValueError):
    """A run that cannot be exported or evaluated as asked: one line naming the run and the fix."""


# --- saving (harness.run) ------------------------------------------------------------------------------------


def save_trained(model: nn.Module, folder: Path, model_cfg: DictConfig) -> int:
    """Save what the method trained in its library's format (see the module's docstring); return the bytes it
    wrote (the folder may already hold the tokenizer and a random base: :func:`save_beside`, written first so
    that the adapter's base exists when PEFT looks at it).

    A module holding several trained models names them (``artifact_parts``: PPO's policy and value model); each
    is saved in its own subfolder, the first at the top.
    """
    folder.mkdir(parents=True, exist_ok=True)
    before = measure.folder_bytes(folder)
    parts = model.artifact_parts() if hasattr(model, "artifact_parts") else {"": model}
    base = base_reference(model_cfg, folder)
    for name, part in parts.items():
        _save_part(part, folder / name if name else folder, base)
    return measure.folder_bytes(folder) - before


def _save_part(model: nn.Module, folder: Path, base: str | None) -> None:
    if methods.is_peft_model(model):
        adapters = list(model.active_adapters)  # not TRL's frozen "ref" copy that DPO adds beside the trained one
        for name in adapters:
            model.peft_config[name].base_model_name_or_path = base
        model.save_pretrained(folder, selected_adapters=adapters)
    elif all(p.requires_grad for p in model.parameters()) and hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)  # full fine-tuning: every weight is the method's
    else:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        trained = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, str(folder / TRAINED_FILE))


def base_reference(model_cfg: DictConfig, folder: Path) -> str:
    """What an adapter in ``folder`` names as its base: the random-init base saved in ``folder/base``, else
    the Hub id, else the absolute local folder the run read the weights from (a GGUF model's conversion)."""
    if model_cfg.get("random_init"):
        return str((folder / BASE_DIR).resolve())
    source = models.model_folder(model_cfg)
    return str(Path(source).resolve()) if is_local_path(source) else source


def save_beside(cfg: DictConfig, objective: Any, folder: Path) -> None:
    """What a kept run needs beside its trained files to stand alone: the tokenizer, and a random-init base
    (drawn again from the run's seed by the harness's loader, as the run drew it) unless every weight trains."""
    models.load_tokenizer(cfg.model).save_pretrained(folder)
    full = isinstance(rebuild_method(cfg, objective), methods.FullFineTuning)  # saved whole: no base needed
    if cfg.model.get("random_init") and not full:
        base = models.load_model(cfg.model, None, cfg.seed, objective.head, objective.num_labels(cfg))
        base.save_pretrained(folder / BASE_DIR)


# --- reading ------------------------------------------------------------------------------------------------


def artifact_kind(folder: Path) -> Kind | None:
    """Which format a kept folder holds (None: none of them)."""
    if (folder / ADAPTER_FILE).is_file():
        return "peft"
    if (folder / "config.json").is_file() and ((folder / MODEL_FILE).is_file() or (folder / MODEL_INDEX).is_file()):
        return "full"
    if (folder / TRAINED_FILE).is_file():
        return "trained"
    return None


def saved_keys(folder: Path) -> tuple[Path, set[str]]:
    """The weights file of a kept folder and its tensor names, from the file's header (no weights read)."""
    from safetensors import safe_open

    kind = artifact_kind(folder)
    if kind is None:
        raise ArtifactError(f"{folder} holds none of {ADAPTER_FILE}, {MODEL_FILE}, {TRAINED_FILE}")
    if kind == "full" and (folder / MODEL_INDEX).is_file():
        return folder / MODEL_INDEX, set(json.loads((folder / MODEL_INDEX).read_text())["weight_map"])
    path = folder / {"peft": ADAPTER_FILE, "full": MODEL_FILE, "trained": TRAINED_FILE}[kind]
    try:
        with safe_open(str(path), framework="pt") as checkpoint:
            return path, set(checkpoint.keys())
    except Exception as error:  # noqa: BLE001 - a torn or foreign file, reported as one line
        raise ArtifactError(f"cannot read {path}: {str(error).splitlines()[0]}") from None


def objective_of(cfg: DictConfig) -> Any:
    """The run's objective object (Hydra instantiate, no checks): what its model was loaded as (head, labels)."""
    from hydra.utils import instantiate

    return instantiate(cfg.objective)


def rebuild_method(cfg: DictConfig, objective: Any) -> Any:
    """The run's method object, built from its config as the run built it."""
    return methods.build_method(cfg.method, methods.method_context(cfg, objective, quantized=False))


def expected_keys(cfg: DictConfig, kind: Kind) -> set[str]:
    """The tensor names a run of ``cfg`` saved in format ``kind``, from its architecture on the meta device."""
    objective = objective_of(cfg)
    skeleton = models.skeleton(cfg.model, objective.num_labels(cfg), objective.head)
    if kind == "full":  # save_pretrained writes each tied weight once
        return set(skeleton.state_dict()) - set(getattr(skeleton, "all_tied_weights_keys", None) or {})
    model = methods.apply_method(
        skeleton, rebuild_method(cfg, objective), methods.method_context(cfg, objective, False)
    )
    if kind == "peft":
        from peft import get_peft_model_state_dict

        return set(get_peft_model_state_dict(model))
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def load_run(record: dict[str, Any], folder: str | Path | None = None, quantized: bool = True):
    """A kept run's model and tokenizer, loaded back with the libraries' own loaders; the model in eval mode.

    ``folder`` defaults to the record's ``artifact_dir``. The base is loaded by the harness's loader from the
    record's config (its dtype, its config overrides, a random draw from the run's seed, a GGUF conversion),
    quantized as the run was unless ``quantized`` is false. PPO's value model is not loaded: the policy is.
    """
    cfg = OmegaConf.create(record["config"])
    folder = Path(folder if folder is not None else record["artifact_dir"])
    objective = objective_of(cfg)
    kind = artifact_kind(folder)
    if kind == "full":
        model = models.load_saved(cfg.model, str(folder), objective.head)
    else:
        quantization = models.quantization_of(cfg) if quantized else None
        base = models.load_model(cfg.model, quantization, cfg.seed, objective.head, objective.num_labels(cfg))
        if kind == "peft":
            from peft import PeftConfig, PeftModel

            if PeftConfig.from_pretrained(str(folder)).is_prompt_learning:
                compat.expose_legacy_cache_kwarg(base)  # as methods.apply_method does for training
            model = PeftModel.from_pretrained(base, str(folder))
        elif kind == "trained":
            model = _with_trained_tensors(base, cfg, objective, folder / TRAINED_FILE)
        else:
            raise ArtifactError(f"{folder} holds none of {ADAPTER_FILE}, {MODEL_FILE}, {TRAINED_FILE}")
    return model.eval(), _tokenizer(cfg, folder)


def _with_trained_tensors(base: nn.Module, cfg: DictConfig, objective: Any, path: Path) -> nn.Module:
    from safetensors.torch import load_file

    model = methods.apply_method(base, rebuild_method(cfg, objective), methods.method_context(cfg, objective, False))
    state = load_file(str(path))
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    if set(state) != trained:
        missing, unexpected = sorted(trained - set(state)), sorted(set(state) - trained)
        raise ArtifactError(
            f"{path} does not hold the tensors its run trained: {len(missing)} missing {missing[:2]}, "
            f"{len(unexpected)} unexpected {unexpected[:2]}"
        )
    model.load_state_dict(state, strict=False)  # the frozen base is not in the file, by design
    return model


def _tokenizer(cfg: DictConfig, folder: Path):
    """The tokenizer kept beside the model; a folder kept before tokenizers were kept: the model config's."""
    if not (folder / "tokenizer_config.json").is_file():
        return models.load_tokenizer(cfg.model)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), **models.remote_code(cfg.model))


# --- which runs can be read back -----------------------------------------------------------------------------


def kept_run(results_dir: str | Path, run_id: str) -> tuple[dict[str, Any], Path]:
    """The record of a successful run that kept its model, and the kept folder; else ArtifactError.

    The folder is looked up under ``results_dir`` (a results folder can move; the record's ``artifact_dir``
    is the path as the run wrote it), falling back to the record's path.
    """
    found = records.inspect_record(records.record_path(results_dir, run_id))
    if found.record is None:
        why = f" ({found.problem})" if found.problem else ""
        raise ArtifactError(f"no usable run {run_id!r} in {Path(results_dir) / 'runs'}{why}; pick a run_id from there")
    record = found.record
    if record.get("status") != "success":
        raise ArtifactError(
            f"run {run_id} has status {record.get('status')}, not success: only a finished run's model is read; "
            "rerun it with harness-run"
        )
    if not record.get("artifact_dir"):
        raise ArtifactError(
            f"run {run_id} kept no model (keep_artifacts was false); rerun it with keep_artifacts=true force=true"
        )
    folder = Path(results_dir) / "artifacts" / run_id
    folder = folder if folder.is_dir() else Path(record["artifact_dir"])
    if artifact_kind(folder) is None:
        raise ArtifactError(
            f"run {run_id}'s kept model is missing ({folder} holds none of {ADAPTER_FILE}, {MODEL_FILE}, "
            f"{TRAINED_FILE}); rerun it with keep_artifacts=true force=true"
        )
    return record, folder


def check_exportable(record: dict[str, Any], folder: Path, merge: bool) -> None:
    """Refuse, before any weights load, what has no standard format (bottleneck adapters) and ``--merge`` of a
    method that trained no weights of the base (prefix, prompt and p-tuning)."""
    cfg = OmegaConf.create(record["config"])
    try:
        method = rebuild_method(cfg, objective_of(cfg))
    except Exception as error:  # a record from another version of the configs: one line, not a traceback
        raise ArtifactError(
            f"run {record['run_id']}: its config no longer builds ({type(error).__name__}: {error})"
        ) from None
    rid, name = record["run_id"], record["method"]
    if artifact_kind(folder) == "trained" and not methods.merges_into_base(method):
        raise ArtifactError(
            f"run {rid} trained {name}, the harness's own bottleneck adapters, which no transformers or PEFT "
            f"format holds: nothing to export; load {folder / TRAINED_FILE} with harness.export.load_run"
        )
    if merge and not methods.merges_into_base(method):
        raise ArtifactError(
            f"--merge: run {rid} trained {name}, which adds virtual tokens rather than weights and cannot be "
            "merged into its base; export it without --merge (a PEFT adapter folder)"
        )


# --- harness-export ------------------------------------------------------------------------------------------


def check_out(out: Path) -> None:
    """An export goes to a new or empty folder: written into another, a merged model could sit beside a stale
    adapter_config.json, which transformers would load as an adapter instead."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArtifactError(f"--out: {out} exists and is not an empty folder; name a new one")


def export_run(record: dict[str, Any], folder: Path, out: Path, merge: bool) -> Path:
    """Write a kept run to ``out``: a PEFT adapter folder (with its base, when that was a random draw), or a
    plain transformers folder (full, head and BitFit runs; any mergeable adapter with ``merge``), and the
    tokenizer. The base is loaded unquantized: a QLoRA adapter merges into the full-precision weights."""
    cfg = OmegaConf.create(record["config"])
    model, tokenizer = load_run(record, folder, quantized=False)
    if merge and methods.is_peft_model(model):
        model = compat.unload_leftover_wrappers(model.merge_and_unload(safe_merge=True))
    out.mkdir(parents=True, exist_ok=True)
    if methods.is_peft_model(model):
        if cfg.model.get("random_init"):
            shutil.copytree(folder / BASE_DIR, out / BASE_DIR, dirs_exist_ok=True)
        save_trained(model, out, cfg.model)
    else:
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="harness-export", description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_id", help="a run kept with keep_artifacts=true (its record is RESULTS_DIR/runs/RUN_ID.json)"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=Path("results"), help="the results folder (default: results)"
    )
    parser.add_argument("--merge", action="store_true", help="merge a LoRA-family adapter into its base")
    parser.add_argument("--out", type=Path, default=None, help="default: RESULTS_DIR/exports/RUN_ID[-merged]")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    suffix = "-merged" if args.merge else ""
    out = args.out if args.out is not None else args.results_dir / "exports" / f"{args.run_id}{suffix}"
    try:
        record, folder = kept_run(args.results_dir, args.run_id)
        check_exportable(record, folder, args.merge)
        check_out(out)
    except ArtifactError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    export_run(record, folder, out, args.merge)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
