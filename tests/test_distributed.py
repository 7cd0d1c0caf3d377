"""One run on several processes (harness.distributed): trains as one process does, and is still one record.

The end-to-end test runs the tiny BERT (dropout off) under ``torchrun --nproc_per_node=2`` on CPU with the gloo
backend and in one process with the same global batch, and compares the records. The other tests need no
second process: the batch arithmetic, the refusals, the presets, and what a rank other than 0 writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SETTLED, TINY, compose_config

from harness import budget, cli, distributed, models, records
from harness.config import ConfigError, validate
from harness.objectives.base import training_arguments
from harness.report.table import hardware
from harness.run import prepare

# The tiny BERT without dropout (two processes draw other masks than one), 8 steps of a global batch of 8 (one epoch of
# the 64 training rows), logged every step, at a learning rate that moves the loss by tenths from step to step; 14
# validation and 13 test rows, so the ranks' last evaluation batches are uneven (accelerate pads them).
DDP_RUN = [
    *TINY,
    "budget.max_steps=8",
    "budget.eval_steps=1",
    "task.generator.n_validation=14",
    "task.generator.n_test=13",
    "method=full",
    "method.lr=2e-2",
    "+model.config_overrides.hidden_dropout_prob=0.0",
    "+model.config_overrides.attention_probs_dropout_prob=0.0",
]
# Measured on CPU fp32: the 2-process curve matched the 1-process one to the last digit (the gradient is the same
# mean, reduced in another order); evaluation losses agree to about 1e-7. A wrong shard or batch is off by far more.
LOSS_TOLERANCE = 1e-5


def _gloo_available() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


needs_gloo = pytest.mark.skipif(not _gloo_available(), reason="torch.distributed with the gloo backend is unavailable")


def _environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def _launch(command: list[str], results_dir: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [*command, *DDP_RUN, f"results_dir={results_dir}"],
        cwd=REPO,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, time.perf_counter() - started


def _only_record(results_dir: Path) -> dict:
    files = sorted((results_dir / "runs").iterdir())
    assert [f.suffix for f in files] == [".json"], files  # one record, nothing beside it
    return json.loads(files[0].read_text())


def _losses(record: dict) -> list[tuple[int, float]]:
    return [(point["step"], point["loss"]) for point in record["learning_curve"] if "loss" in point]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """The same run in one process and under torchrun with two (gloo on CPU), each in its own results folder; the
    two processes also accumulate (micro-batches of 2: each takes its 4 examples of a step in 2 passes)."""
    if not _gloo_available():
        pytest.skip("torch.distributed with the gloo backend is unavailable")
    single_dir, ddp_dir = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("ddp")
    _, single_s = _launch([sys.executable, "-m", "harness.cli"], single_dir)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    launched, ddp_s = _launch([*torchrun, "-m", "harness.cli", "budget.micro_batch_size=2"], ddp_dir)
    single, ddp = _only_record(single_dir), _only_record(ddp_dir)
    print(
        f"\n1 process: {single_s:.1f} s wall, {single['time']['train_seconds']:.2f} s training; "
        f"torchrun, 2 processes: {ddp_s:.1f} s wall, {ddp['time']['train_seconds']:.2f} s training"
    )
    return single, ddp, ddp_dir, launched


@needs_gloo
def test_two_processes_train_as_one_with_the_same_global_batch(one_and_two):
    single, ddp, _, _ = one_and_two
    assert ddp["run_id"] == single["run_id"]  # neither the world size nor the micro-batch is part of the identity
    steps = [step for step, _ in _losses(single)]
    assert steps == [step for step, _ in _losses(ddp)] == list(range(1, 9))
    differences = [abs(a - b) for (_, a), (_, b) in zip(_losses(single), _losses(ddp), strict=True)]
    print(f"\nlargest loss difference over {len(steps)} logged steps: {max(differences):.3g}")
    assert max(differences) <= LOSS_TOLERANCE
    losses = [loss for _, loss in _losses(single)]
    assert max(losses) - min(losses) > 0.1  # the curve moves: other batches or another step would show
    for key in ("steps", "samples", "train_tokens", "data_order_sha256"):  # samples and tokens summed over ranks
        assert ddp["compute"][key] == single["compute"][key], key
    assert ddp["compute"]["samples"] == 8 * 8


@needs_gloo
def test_evaluation_on_two_processes_scores_every_example_once(one_and_two):
    """13 test rows in per-device batches of 4: accelerate pads the last batches by repeating rows, which neither
    the metrics nor the loss may count."""
    single, ddp, _, _ = one_and_two
    for split in ("validation", "test"):
        assert ddp["metrics"][split]["accuracy"] == single["metrics"][split]["accuracy"]
        assert ddp["metrics"][split]["loss"] == pytest.approx(single["metrics"][split]["loss"], abs=LOSS_TOLERANCE)
    for a, b in zip(single["learning_curve"], ddp["learning_curve"], strict=True):
        assert a.keys() == b.keys() and a.get("eval_accuracy") == b.get("eval_accuracy")


@needs_gloo
def test_the_record_says_how_the_run_was_spread(one_and_two):
    single, ddp, _, _ = one_and_two
    layout = ddp["distributed"]
    assert layout["world_size"] == 2 and layout["backend"] == "gloo" and layout["launcher"] == "torchrun"
    assert layout["strategy"] == "ddp" and layout["distributed_type"] == "MULTI_CPU"
    assert (layout["per_device_train_batch_size"], layout["gradient_accumulation_steps"]) == (2, 2)
    assert ddp["training"]["batch_size"] == 8 and ddp["memory"]["micro_batch_size"] == 2
    assert single["distributed"]["world_size"] == 1 and single["distributed"]["backend"] is None
    memory = ddp["memory"]
    for key in ("baseline_bytes", "train_peak_bytes", "eval_peak_bytes"):
        per_rank = memory[f"{key}_per_rank"]
        assert len(per_rank) == 2 and all(per_rank)
        assert memory[key] == max(per_rank) and memory[f"{key}_sum_over_ranks"] == sum(per_rank)
    assert single["memory"]["train_peak_bytes_per_rank"] == [single["memory"]["train_peak_bytes"]]
    compute = ddp["compute"]
    assert compute["flops_counted_steps"] == 2  # each rank counted its first pass; the rest scaled
    assert compute["flops_counted_steps"] + compute["flops_scaled_steps"] == 2 * 8 * 2  # ranks × steps × passes
    assert compute["peak_source"].startswith("sum over 2 ranks")
    assert compute["mfu"] == pytest.approx(
        compute["train_flops"] / compute["seconds"] / compute["peak_flops_per_second"]
    )
    assert hardware(ddp).endswith("× 2 processes") and "processes" not in hardware(single)


@needs_gloo
def test_only_rank_0_writes_under_results_dir_and_logs_the_summary(one_and_two):
    _, _, ddp_dir, launched = one_and_two
    written = sorted(str(p.relative_to(ddp_dir)) for p in ddp_dir.rglob("*") if p.is_file())
    runs = [p for p in written if p.startswith("runs/")]
    hydra_runs = {Path(p).parts[2] for p in written if p.startswith("hydra/run/")}
    assert len(runs) == 1 and len(hydra_runs) == 1 and len(written) == len(runs) + 4  # rank 0's Hydra folder alone
    output = launched.stdout + launched.stderr
    assert output.count("full on toy_sentiment (tiny, seed 0): success") == 1
    assert output.count("step 8/8: loss") == 1


@pytest.fixture
def rank_1(monkeypatch):
    """This process as rank 1 of a run (collectives stay a single process's); the harness log level it sets is
    put back afterwards."""
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    level = cli.log.level
    yield
    cli.log.setLevel(level)


def test_a_rank_other_than_0_trains_and_writes_nothing(make_cfg, tmp_path, rank_1, caplog):
    """Rank 1 of a run (collectives are a single process's here): it trains and returns the record, and neither
    writes it nor logs the summary."""
    results = tmp_path / "results"
    with caplog.at_level("INFO", logger="harness"):
        record = cli.run_one(make_cfg(*TINY, "budget.max_steps=1"))
    assert record["status"] == "success" and record["trained_bytes"] is None and record["samples_file"] is None
    assert not results.exists()
    assert "success" not in caplog.text


def test_a_failing_rank_other_than_0_writes_no_failed_record(make_cfg, tmp_path, rank_1, monkeypatch):

    def fail(*args, **kwargs):
        raise RuntimeError("rank 1 lost its data")

    monkeypatch.setattr(models, "load_classifier", fail)
    with pytest.raises(SystemExit):
        cli.run_one(make_cfg(*TINY, "budget.max_steps=1"))
    assert not (tmp_path / "results").exists()


def test_other_ranks_send_hydra_s_output_to_a_temporary_folder(monkeypatch):
    cfg = compose_config(["results_dir=/somewhere"], return_hydra_config=True)
    assert cfg.hydra.run.dir.startswith("/somewhere/hydra/run/")
    assert cfg.hydra.sweep.dir.startswith("/somewhere/hydra/multirun/")
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    folder = Path(cli.rank_output_dir("/somewhere/hydra/run/x"))
    assert folder.is_dir() and folder.name.startswith("harness-rank1-") and "somewhere" not in str(folder)
    assert cli.rank_output_dir("/somewhere/hydra/run/x") == str(folder)  # the same folder at every resolution


# --- the batch on several processes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("micro", "world", "expected"),
    [(None, 1, (8, 1)), (None, 2, (4, 1)), (2, 2, (2, 2)), (8, 2, (4, 1)), (1, 4, (1, 2))],
)
def test_each_process_takes_an_equal_share_of_the_global_batch(make_cfg, monkeypatch, micro, world, expected):
    """budget.batch_size is the optimizer step's batch: per process batch_size / world size, in passes of at most
    the micro-batch (a micro-batch above a process's share is that share)."""
    cfg = make_cfg(*TINY, f"budget.micro_batch_size={'null' if micro is None else micro}")
    assert (budget.micro_batch_size(cfg.budget, world), budget.accumulation_steps(cfg.budget, world)) == expected
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    args = training_arguments(cfg, "unused", "fp32", _cpu())
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == expected
    assert args.per_device_eval_batch_size == expected[0]


def _cpu():
    import torch

    return torch.device("cpu")


@pytest.mark.parametrize(
    ("overrides", "world", "message"),
    [
        (
            ["budget.batch_size=9"],
            "2",
            "budget.batch_size: 9 must divide by world size 2 (each process takes an equal share of the global batch "
            "of an optimizer step)",
        ),
        (
            ["budget.batch_size=12", "budget.micro_batch_size=4"],
            "2",
            "budget.micro_batch_size: must divide each process's share of the batch, budget.batch_size / world size "
            "= 6 (got 4)",
        ),
        (
            ["distributed.nproc_per_node=4"],
            "2",
            "distributed.nproc_per_node: is 4, but a launcher started this run with 2 processes per node; set one of "
            "them only",
        ),
        (
            ["distributed=fsdp"],
            None,
            "distributed.fsdp: shards the model over several processes, and this run has one; launch it with torchrun "
            "--nproc_per_node=N or set distributed.nproc_per_node (preset 'fsdp')",
        ),
        (
            ["distributed.backend=tcp"],
            None,
            "distributed.backend: got 'tcp'; allowed: null, nccl, gloo, mpi, xccl, hccl, cncl, mccl",
        ),
        (
            ["distributed=zero3", "distributed.nproc_per_node=2", "+distributed.deepspeed.optimizer.type=AdamW"],
            None,
            "distributed.deepspeed.optimizer: is train.* for every run (the Trainer hands its own optimizer and "
            "schedule to DeepSpeed); remove it",
        ),
        (
            ["distributed=zero3", "distributed.nproc_per_node=2", "distributed.deepspeed.bf16.enabled=true"],
            None,
            "distributed.deepspeed.bf16.enabled: must be auto: precision is train.precision for every run (got True)",
        ),
    ],
)
def test_bad_distributed_settings_are_one_line_before_anything_loads(make_cfg, monkeypatch, overrides, world, message):
    """With ``world`` set, as torchrun sets it for each rank; without, the world is distributed.nproc_per_node."""
    if world is not None:
        monkeypatch.setenv("WORLD_SIZE", world)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", world)
    with pytest.raises(ConfigError) as caught:
        validate(make_cfg(*TINY, *overrides))
    assert str(caught.value) == message


def test_the_batch_is_checked_against_the_processes_harness_run_will_start(make_cfg):
    with pytest.raises(ConfigError, match=r"^budget.batch_size: 8 must divide by world size 3 "):
        validate(make_cfg(*TINY, "distributed.nproc_per_node=3"))
    validate(make_cfg(*TINY, "budget.batch_size=9"))  # one process: any batch


def test_objectives_not_shown_to_train_across_processes_are_refused(make_cfg, no_model_load):
    lm = ["model=tiny_llama", "budget=tiny", "budget.batch_size=4", "task=arithmetic_pref", "task.max_seq_length=128"]
    with pytest.raises(ConfigError) as caught:
        prepare(make_cfg(*lm, "objective=dpo", "distributed.nproc_per_node=2"))
    assert str(caught.value) == (
        "objective: 'dpo' runs in one process only (world size here: 2); the objectives shown to train on several "
        "processes as on one are: cls"
    )


@pytest.mark.parametrize("preset", ["fsdp", "zero3"])
def test_sharding_presets_are_refused_on_cpu(make_cfg, no_model_load, preset, monkeypatch):
    """accelerate would run CPU processes unsharded (MULTI_CPU) under a record naming the preset."""
    monkeypatch.setattr("harness.config._validate_deepspeed", lambda settings: None)  # deepspeed is not installed
    key = "fsdp" if preset == "fsdp" else "deepspeed"
    with pytest.raises(ConfigError, match=rf"^distributed.{key}: shards the model over GPUs; on CPU"):
        prepare(make_cfg(*TINY, f"distributed={preset}", "distributed.nproc_per_node=2"))


def test_zero3_needs_deepspeed_installed(make_cfg):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    with pytest.raises(ConfigError) as caught:
        validate(make_cfg(*TINY, "distributed=zero3", "distributed.nproc_per_node=2"))
    assert str(caught.value) == "distributed.deepspeed: needs the deepspeed package, which is not installed"


def test_world_size_and_strategy_are_not_part_of_the_run_id(make_cfg):
    """The global batch is the budget's, whatever the processes, and the presets compute the same step."""
    base = records.run_id(make_cfg(*TINY), SETTLED)
    for overrides in (["distributed.nproc_per_node=2"], ["distributed=fsdp", "distributed.nproc_per_node=8"]):
        assert records.run_id(make_cfg(*TINY, *overrides), SETTLED) == base
    assert "distributed" not in records.identity_config(make_cfg(*TINY))


# --- presets -----------------------------------------------------------------------------------------------------


def test_the_fsdp_preset_reaches_the_trainer_s_fsdp_plugin(make_cfg, monkeypatch):
    """Composed, then given to TrainingArguments as a rank of a 2-process run would: the Trainer's FSDP plugin
    arguments are the preset's (FSDP2, full shard, one unit per transformer layer, whole state dict)."""
    cfg = make_cfg(*TINY, "distributed=fsdp", "distributed.nproc_per_node=2")
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    args = training_arguments(cfg, "unused", "fp32", _cpu())
    assert args.fsdp_plugin_args["fsdp_version"] == 2
    assert args.fsdp_plugin_args["reshard_after_forward"] is True
    assert args.fsdp_plugin_args["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert args.fsdp_plugin_args["state_dict_type"] == "FULL_STATE_DICT"
    assert args.fsdp_plugin_args["activation_checkpointing"] is False
    assert args.per_device_train_batch_size == 4


def test_the_zero3_preset_hands_deepspeed_a_stage_3_config_with_the_harness_s_settings(make_cfg):
    """Everything that decides the step is ``auto`` (the Trainer fills it in from the harness's own arguments);
    the TrainingArguments keyword it reaches is ``deepspeed`` (building them needs the deepspeed package)."""
    cfg = make_cfg(*TINY, "distributed=zero3", "distributed.nproc_per_node=2")
    arguments = distributed.trainer_arguments(cfg)
    assert set(arguments) == {"deepspeed"}
    settings = arguments["deepspeed"]
    assert settings["zero_optimization"]["stage"] == 3
    assert "optimizer" not in settings and "scheduler" not in settings
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert settings[key] == "auto"
    assert settings["bf16"] == settings["fp16"] == {"enabled": "auto"}
    assert distributed.trainer_arguments(make_cfg(*TINY, "distributed=zero3")) == {}  # one process: nothing


def test_the_slurm_torchrun_preset_gives_each_job_the_run_s_gpus_and_one_task():
    """The job holds N GPUs and one task (the harness job, which starts torchrun with N processes itself)."""
    cfg = compose_config(["hydra/launcher=slurm_torchrun", "distributed.nproc_per_node=4"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (4, 1, 1)
    assert distributed.starts_processes(cfg)


def test_combining_ranks_keeps_each_figure_s_meaning():
    memory = distributed.combine_memory(
        [
            {"source": "linux_vmhwm", "baseline_bytes": 10, "train_peak_bytes": 30, "eval_peak_bytes": None},
            {"source": "linux_vmhwm", "baseline_bytes": 12, "train_peak_bytes": 25, "eval_peak_bytes": None},
        ]
    )
    assert memory["train_peak_bytes"] == 30 and memory["train_peak_bytes_sum_over_ranks"] == 55
    assert memory["train_peak_bytes_per_rank"] == [30, 25] and memory["baseline_bytes"] == 12
    assert memory["eval_peak_bytes"] is None and memory["eval_peak_bytes_sum_over_ranks"] is None
    flops = distributed.combine_flops(
        [
            {"train_flops": 1.0, "flops_counted_steps": 1, "flops_scaled_steps": 3, "flops_scaled_by": "padded_tokens"},
            {"train_flops": 2.0, "flops_counted_steps": 1, "flops_scaled_steps": 3, "flops_scaled_by": "padded_tokens"},
        ]
    )
    assert (flops["train_flops"], flops["flops_counted_steps"], flops["flops_scaled_steps"]) == (3.0, 2, 6)
    assert distributed.combine_peaks([(5.0, "spec"), (5.0, "spec")]) == (
        10.0,
        "sum over 2 ranks of each rank's peak (spec)",
    )
    assert distributed.combine_peaks([(5.0, "spec"), (None, "unknown")])[0] is None
    assert distributed.combine_peaks([(5.0, "spec")]) == (5.0, "spec")


# --- harness-run starting the processes itself --------------------------------------------------------------------


@needs_gloo
@pytest.mark.slow  # about 30 s: a second 2-process run
def test_nproc_per_node_makes_harness_run_start_torchrun_itself(tmp_path, one_and_two):
    """``distributed.nproc_per_node=2`` without a launcher: harness-run starts the ranks (what a SLURM job of
    hydra/launcher=slurm_torchrun does) and returns the record rank 0 wrote, the same as torchrun's."""
    _, ddp, _, _ = one_and_two
    done, seconds = _launch([sys.executable, "-m", "harness.cli", "distributed.nproc_per_node=2"], tmp_path)
    record = _only_record(tmp_path)
    print(f"\nharness-run distributed.nproc_per_node=2: {seconds:.1f} s")
    assert record["distributed"]["launcher"] == distributed.HARNESS_LAUNCHER
    assert record["distributed"]["world_size"] == 2
    for (step, loss), (ddp_step, ddp_loss) in zip(_losses(record), _losses(ddp), strict=True):
        assert step == ddp_step and loss == pytest.approx(ddp_loss, abs=LOSS_TOLERANCE)
    assert (done.stdout + done.stderr).count("success, accuracy") == 1


def test_the_run_s_precision_wins_over_accelerate_launch_s(make_cfg, monkeypatch):
    """``accelerate launch --mixed_precision bf16`` exports it to every rank; the Trainer would take it over fp32."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    args = training_arguments(make_cfg(*TINY), "unused", "fp32", _cpu())
    assert args.mixed_precision == "no" and os.environ["ACCELERATE_MIXED_PRECISION"] == "no"


def test_rank_0_s_clock_stops_every_rank_on_a_time_budget(make_cfg, monkeypatch):
    """Ranks that stopped on their own clocks would wait for each other for ever: rank 0's decision is everyone's."""
    from transformers import TrainerControl, TrainerState

    callback = budget.BudgetCallback(make_cfg(*TINY, "budget.max_time_s=3600").budget)
    callback.on_train_begin(None, TrainerState(), TrainerControl())
    asked = []
    monkeypatch.setattr(distributed, "from_main", lambda value: asked.append(value) or True)  # rank 0 ran out
    control = callback.on_step_end(None, TrainerState(), TrainerControl())
    assert asked == [False] and control.should_training_stop and callback.stop_reason == "max_time_s"


def test_a_study_inside_torchrun_is_refused(monkeypatch):
    from hydra_plugins.harness_study_sweeper.study_sweeper import refuse_inside_a_launch

    refuse_inside_a_launch()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^hydra/sweeper: study runs inside a launch of 2 processes"):
        refuse_inside_a_launch()


def test_the_launcher_is_named_from_what_it_exported(monkeypatch):
    """accelerate launch starts torchrun's agent too: its own variables come first (accelerate launch --multi_gpu
    --num_processes 2 of the tiny BERT, run by hand, recorded ``accelerate launch``)."""
    assert distributed.launcher() is None  # one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    cases = [
        (set(), "environment (WORLD_SIZE, RANK)"),
        ({"TORCHELASTIC_RUN_ID"}, "torchrun"),
        ({"TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION"}, "accelerate launch"),
    ]
    for exported, name in cases:
        monkeypatch.setattr(distributed, "_LAUNCH_ENVIRONMENT", frozenset(exported))
        assert distributed.launcher() == name
    monkeypatch.setenv(distributed.LAUNCHED_BY_HARNESS, "1")
    assert distributed.launcher() == distributed.HARNESS_LAUNCHER
