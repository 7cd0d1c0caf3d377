"""Forgetting on general text (causal LMs) and retention on a second task (encoders): harness.forgetting."""

from __future__ import annotations

import pytest
import torch
from conftest import SETTLED, SHARED_DATA, TINY, WIKITEXT, compose_config, run_id_of
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from harness import forgetting, records
from harness.config import ConfigError

needs_wikitext = pytest.mark.skipif(not WIKITEXT.is_file(), reason=f"{WIKITEXT} absent (../shared/data)")
needs_sst2 = pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="../shared/data/sst2 absent")

# The tiny random Llama under the SFT objective, a few steps on the embedded arithmetic task.
TINY_SFT = [
    f"data_root={SHARED_DATA}",
    "model=tiny_llama",
    "task=arithmetic",
    "objective=sft",
    "budget=tiny",
    "budget.batch_size=4",
    "budget.max_eval_samples=2",
    "task.max_seq_length=128",
    "task.max_new_tokens=2",
    "task.generator.n_train=64",
    "task.generator.n_validation=2",
    "task.generator.n_test=2",
    "forgetting.tokens=512",
]


def tiny_lm(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


def test_token_losses_shift_logits_against_labels_as_the_model_does():
    """One unpadded window: the mean of our per-token losses is the model's own (shifted) language-model loss."""
    model = tiny_lm()
    ids = torch.randint(0, 50, (1, 40))
    logits = model(input_ids=ids).logits
    ours = forgetting.token_losses(logits, ids, torch.ones_like(ids))
    assert ours.numel() == 39  # the first token has no context
    assert ours.mean().item() == pytest.approx(model(input_ids=ids, labels=ids).loss.item(), abs=1e-5)
    unshifted = torch.nn.functional.cross_entropy(logits[0].float(), ids[0])  # the classic off-by-one
    assert abs(unshifted.item() - ours.mean().item()) > 1e-3


def test_padding_changes_no_token_loss_and_the_mean_counts_tokens_not_windows():
    model = tiny_lm()
    long, short = torch.randint(0, 50, (30,)).tolist(), torch.randint(0, 50, (7,)).tolist()
    together = forgetting.score(model, [long, short], batch_size=2, pad_id=0)
    alone = torch.cat([forgetting.score(model, [w], batch_size=1, pad_id=0) for w in (long, short)])
    assert together.numel() == 29 + 6
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    window_means = (alone[:29].mean() + alone[29:].mean()) / 2
    assert forgetting.forgetting_fields(together, together, [29, 6])["before_ce"] == pytest.approx(
        alone.mean().item(), abs=1e-6
    )
    assert abs(window_means.item() - alone.mean().item()) > 1e-4  # a mean of window means would weigh short windows up


def test_padding_id_that_is_a_real_token_is_still_masked():
    """Padding with a token the text uses (EOS, id 0 here) must not be scored as text."""
    model = tiny_lm()
    window = [0, 5, 0, 7, 9]
    padded = forgetting.score(model, [window, [3] * 12], batch_size=2, pad_id=0)[:4]
    torch.testing.assert_close(padded, forgetting.score(model, [window], batch_size=1, pad_id=0), atol=1e-5, rtol=1e-5)


def test_prompt_tuning_scores_only_the_text_positions_of_its_longer_logits():
    """Prompt tuning prepends virtual tokens to the logits: the text's losses are the last positions'."""
    from peft import PromptTuningConfig, get_peft_model

    text = [list(range(1, 21))]
    base_losses = forgetting.score(tiny_lm(), text, 1, 0)
    wrapped = get_peft_model(tiny_lm(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert wrapped(input_ids=torch.tensor(text)).logits.shape[1] == 24
    prompted = forgetting.score(wrapped, text, 1, 0)
    assert prompted.shape == base_losses.shape == (19,) and not torch.allclose(prompted, base_losses)


def test_the_standard_error_is_clustered_by_window():
    """Tokens of a window move together: the error of the mean is the spread of window sums, not of tokens."""
    difference = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    per_window = [3, 3, 3]
    sums, mean = [3.0, 0.0, 6.0], 1.0
    expected = (3 / 2 * sum((d - mean * 3) ** 2 for d in sums)) ** 0.5 / 9
    assert forgetting.window_stderr(difference, per_window) == pytest.approx(expected)
    naive = float(difference.std()) / 9**0.5
    assert forgetting.window_stderr(difference, per_window) > naive
    assert forgetting.window_stderr(difference[:3], [3]) is None  # one window: no spread to measure


def test_windows_hold_the_first_tokens_of_the_text_in_the_model_tokenisation():
    from harness.models import load_tokenizer

    tokenizer = load_tokenizer(compose_config(["model=tiny_llama"]).model)
    text = "The quick brown fox jumps over the lazy dog. " * 200
    windows = forgetting.token_windows(tokenizer, text, tokens=100, sequence_length=32)
    assert [len(w) for w in windows] == [32, 32, 32, 4]
    assert sum(windows, []) == tokenizer(text, add_special_tokens=False)["input_ids"][:100]
    with pytest.raises(ConfigError, match=r"^forgetting\.tokens: the text has \d+ tokens"):
        forgetting.token_windows(tokenizer, "too short", tokens=100, sequence_length=32)


def test_the_local_wikitext_copy_is_read_with_its_escapes_undone(tmp_path):
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "test.txt").write_text(" = A = \n a well @-@ known 1 @,@ 000 , 3 @.@ 5 .\n")
    spec = forgetting.GeneralText.from_config(compose_config([f"data_root={tmp_path}"]).forgetting)
    sample = forgetting.read_text(spec)
    assert sample.text == " = A = \n a well-known 1,000 , 3.5 .\n"
    assert sample.source == str(tmp_path / "wikitext2" / "test.txt") and len(sample.sha256) == 64
    missing = forgetting.GeneralText.from_config(compose_config([f"data_root={tmp_path / 'nowhere'}"]).forgetting)
    with pytest.raises(ConfigError, match=r"^forgetting\.local\.file: .*test\.txt not found$"):
        forgetting.read_text(missing)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("forgetting.tokens=1", r"^forgetting\.tokens: must be an integer >= 2"),
        ("forgetting.batch_size=0", r"^forgetting\.batch_size: must be an integer >= 1"),
        ("forgetting.local.unescape=html", r"^forgetting\.local\.unescape: allowed: wikitext, None"),
        ("retention_task=sst3", r"^retention_task: no task 'sst3' \(did you mean 'sst2'\?\); allowed: null, "),
    ],
)
def test_bad_forgetting_settings_are_one_line_before_any_model(override, message):
    from harness.config import validate_values

    with pytest.raises(ConfigError, match=message):
        validate_values(compose_config([*TINY, override]))


@needs_wikitext
def test_the_text_is_read_and_cut_before_any_weights_load(tmp_path, monkeypatch):
    """Too few tokens for the spec, a missing file: one line from prepare, no model loaded, no record written."""
    from harness import models
    from harness.run import prepare

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(models, "load_model", no_weights)
    base = [f"results_dir={tmp_path}", *[o for o in TINY_SFT if not o.startswith("forgetting.")]]
    prepared = prepare(compose_config(base))
    assert sum(len(w) for w in prepared.retention.general_text.windows) == 4096
    with pytest.raises(ConfigError, match=r"^forgetting\.tokens: the text has \d+ tokens in this model's tokenisation"):
        prepare(compose_config([*base, "forgetting.tokens=100000000"]))
    with pytest.raises(ConfigError, match=r"^forgetting\.local\.file: .* not found"):
        prepare(compose_config([*base, "forgetting.local.file=wikitext2/absent.txt"]))
    assert not (tmp_path / "runs").exists()


def test_a_tuning_trial_scores_no_general_text():
    """Trials are chosen on validation quality: forgetting there would cost time and choose nothing."""
    from harness.run import prepare

    if not WIKITEXT.is_file():
        pytest.skip(f"{WIKITEXT} absent")
    base = [o for o in TINY_SFT if not o.startswith("forgetting.")]
    trial = compose_config([*base, "role=trial", "tuning.storage=sqlite:///x.db", "tuning.trial_id=0"])
    assert prepare(trial).retention.general_text is None and "forgetting" not in prepare(trial).identity
    assert "forgetting" in prepare(compose_config([*base, "role=final"])).identity


def test_forgetting_is_part_of_a_causal_run_identity_and_of_no_classifier_identity():
    if not WIKITEXT.is_file():
        pytest.skip(f"{WIKITEXT} absent")
    base = [o for o in TINY_SFT if not o.startswith("forgetting.")]
    lm = compose_config(base)
    assert run_id_of(lm) != run_id_of(compose_config([*base, "forgetting=none"]))
    assert run_id_of(lm) != run_id_of(compose_config([*base, "forgetting.tokens=2048"]))
    assert run_id_of(lm) == run_id_of(compose_config([*base, "forgetting.batch_size=2"]))  # how, not what
    encoder = compose_config(TINY)
    assert records.run_id(encoder, SETTLED) == records.run_id(compose_config([*TINY, "forgetting=none"]), SETTLED)
    assert run_id_of(encoder) == run_id_of(compose_config([*TINY, "forgetting.tokens=2048"]))


@needs_wikitext
def test_sft_and_dpo_runs_record_forgetting_and_a_high_learning_rate_forgets_more(tmp_path):
    """The starting model is scored the same way by every method; a run trained hard on a narrow task moves its
    general-text loss far more than one trained gently (the tiny model is random, so only the size is expected)."""
    from harness.cli import run_one

    def run(*overrides):
        record = run_one(compose_config([f"results_dir={tmp_path}", *TINY_SFT, *overrides]))
        assert record["status"] == "success", record.get("error")
        return record["forgetting"]

    gentle = run("method=lora", "method.lr=1e-5", "budget.max_steps=6", "budget.eval_steps=6")
    hard = run("method=full", "method.lr=3e-2", "budget.max_steps=12", "budget.eval_steps=12")
    dpo = run("task=arithmetic_pref", "objective=dpo", "method=lora", "budget.max_steps=2", "budget.eval_steps=2")
    # Prompt tuning changes the output from its first step: "before" is the model as loaded, not as wrapped.
    prompt = run("method=prompt", "method.lr=1e-5", "budget.max_steps=1", "budget.eval_steps=1")
    assert prompt["before_ce"] == gentle["before_ce"] and prompt["after_ce"] != prompt["before_ce"]
    for block in (gentle, hard, dpo):
        assert block["scored_tokens"] == 512 - 2  # two windows of 256, each first token unscored
        assert block["forgetting"] == pytest.approx(block["after_ce"] - block["before_ce"], abs=1e-9)
        assert block["text"] == "wikitext2" and block["windows"] == 2
    assert gentle["before_ce"] == hard["before_ce"] == dpo["before_ce"]  # one starting model, one text
    assert abs(gentle["forgetting"]) < 0.01 and hard["forgetting"] > 1.0
    assert hard["forgetting"] > 3 * hard["forgetting_stderr"] > 0


@needs_sst2
def test_retention_task_scores_an_encoder_on_a_second_task_with_the_same_labels(tmp_path):
    from harness.cli import run_one

    base = [f"results_dir={tmp_path}", f"data_root={SHARED_DATA}", *TINY]
    record = run_one(compose_config([*base, "retention_task=sst2"]))
    assert record["status"] == "success", record.get("error")
    retention = record["retention"]
    assert retention["task"] == "sst2" and retention["split"] == "test" and retention["examples"] == 16
    assert 0.0 <= retention["primary_metric"]["value"] <= 1.0
    assert retention["primary_metric"]["value"] == retention["metrics"]["accuracy"]
    assert record["forgetting"] is None  # an encoder has no language-model head to score
    plain = compose_config(base)
    assert OmegaConf.select(plain, "retention_task") is None
    assert run_id_of(plain) != record["run_id"]
    with pytest.raises(ConfigError, match=r"^retention_task: rte's labels \['entailment', 'not_entailment'\] differ"):
        from harness.run import prepare

        prepare(compose_config([*base, "retention_task=rte"]))


@needs_wikitext
def test_a_failing_measurement_after_training_is_recorded_in_its_block_and_the_run_succeeds(tmp_path, monkeypatch):
    from harness.cli import run_one

    def out_of_memory(self, model, trainer=None):
        raise torch.OutOfMemoryError("no room for the logits")

    monkeypatch.setattr(forgetting.ForgettingProbe, "after", out_of_memory)
    record = run_one(
        compose_config([f"results_dir={tmp_path}", *TINY_SFT, "budget.max_steps=1", "budget.eval_steps=1"])
    )
    assert record["status"] == "success" and record["metrics"]["test"]
    assert record["forgetting"] == {"error": "OutOfMemoryError: no room for the logits"}


def _example_with_forgetting(tmp_path, cut_of) -> tuple:
    """The committed example's records, each given a forgetting block (method-dependent, seed-dependent figures)."""
    import json
    import shutil

    from conftest import REPO

    folder = tmp_path / "results"
    shutil.copytree(REPO / "results" / "example" / "runs", folder / "runs")
    shutil.copytree(REPO / "results" / "example" / "studies", folder / "studies")
    expected = {}
    for path in sorted((folder / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        shift = {"full": 0.30, "lora": 0.02, "ia3": 0.01}[record["method"]] + 0.001 * record["seed"]
        tokens = cut_of(record)
        record["forgetting"] = {
            "before_ce": 3.5,
            "after_ce": 3.5 + shift,
            "forgetting": shift,
            "text_sha256": "ab" * 32,
            "tokens": tokens,
            "sequence_length": 256,
        }
        path.write_text(json.dumps(record))
        if record.get("role") == "final":
            expected.setdefault(record["method"], []).append(shift)
    return folder, expected


def test_the_report_shows_forgetting_its_front_and_its_plot(tmp_path):
    from harness.report.cli import build_report

    folder, expected = _example_with_forgetting(tmp_path, lambda record: 4096)
    build_report(folder, None, ["md", "csv", "html"], "full")
    summary = __import__("pandas").read_csv(folder / "report" / "summary.csv").set_index("method")
    for method, shifts in expected.items():
        assert summary.loc[method, "forgetting"] == pytest.approx(sum(shifts) / len(shifts))
        assert summary.loc[method, "ce_before"] == pytest.approx(3.5)
    assert bool(summary.loc["ia3", "pareto_forgetting"]) and not bool(summary.loc["full", "pareto_forgetting"])
    markdown = (folder / "report" / "report.md").read_text()
    assert "Forgetting (Δ CE, nats/token)" in markdown and "or against forgetting (forgetting)" in markdown
    assert (folder / "report" / "plots" / "toy_negation_quality_vs_forgetting.png").stat().st_size > 0


def test_forgetting_on_different_cuts_of_the_text_is_never_averaged_or_ranked(tmp_path):
    from harness.report.cli import build_report

    folder, _ = _example_with_forgetting(tmp_path, lambda record: 256 if record["seed"] % 2 else 4096)
    build_report(folder, None, ["md", "csv"], "full")
    summary = __import__("pandas").read_csv(folder / "report" / "summary.csv").set_index("method")
    assert set(summary["forgetting_text"]) == {"mixed"} and summary["forgetting"].isna().all()
    assert not summary["pareto_forgetting"].any()
    assert not (folder / "report" / "plots" / "toy_negation_quality_vs_forgetting.png").exists()
    assert "not comparable" in (folder / "report" / "report.md").read_text()
