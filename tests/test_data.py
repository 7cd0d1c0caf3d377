"""Task stage: embedded generators, local files, label handling, fixed splits."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from conftest import SHARED_DATA, TINY

from harness.config import ConfigError
from harness.data import load_task, tokenize
from harness.data.load import load_raw
from harness.models import load_tokenizer
from tasks.generators import synthetic


@pytest.mark.parametrize("generator", [synthetic.sentiment, synthetic.negation, synthetic.entailment])
def test_embedded_tasks_are_deterministic_sized_balanced_and_disjoint(generator):
    first, second = generator(), generator()
    assert {s: len(first[s]) for s in first} == {"train": 4000, "validation": 500, "test": 500}
    for split in first:
        assert first[split].to_dict() == second[split].to_dict()
    text_columns = [c for c in first["train"].column_names if c != "label"]
    keys = {s: set(zip(*[first[s][c] for c in text_columns], strict=True)) for s in first}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
    counts = Counter(first["train"]["label"])
    assert abs(counts[0] - counts[1]) < 0.1 * len(first["train"])
    assert generator(seed=7)["train"]["label"] != first["train"]["label"]


def test_label_noise_flips_the_requested_fraction():
    clean = synthetic.sentiment(label_noise=0.0)
    noisy = synthetic.sentiment(label_noise=0.2)
    assert clean["train"]["text"] == noisy["train"]["text"]  # noise never changes which texts exist
    flipped = sum(a != b for a, b in zip(clean["train"]["label"], noisy["train"]["label"], strict=True))
    assert 0.17 < flipped / len(clean["train"]) < 0.23


@pytest.mark.parametrize(
    ("generator", "words"),
    [(synthetic.sentiment, ["great", "terrible", "not", "but", "although"]), (synthetic.negation, ["great", "not"])],
)
def test_no_single_word_gives_the_sentiment_label_away(generator, words):
    data = generator(label_noise=0.0)["train"]
    for word in words:
        labels = [
            label for text, label in zip(data["text"], data["label"], strict=True) if re.search(rf"\b{word}\b", text)
        ]
        assert len(labels) > 100, word
        share = sum(labels) / len(labels)
        assert 0.2 < share < 0.8, f"{word!r} predicts the label ({share:.2f} positive)"


def _write_glue_like(folder, rows, header, name):
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header), *("\t".join(map(str, r)) for r in rows)]
    (folder / name).write_text("\n".join(lines) + "\n")


def test_local_tsv_folder_with_dev_file_and_string_labels(make_cfg, tmp_path):
    """RTE's distribution: train.tsv/dev.tsv, string labels, a quote character in the text."""
    rows = [(i, f'premise "{i}"', f"hypothesis {i}", ["entailment", "not_entailment"][i % 2]) for i in range(40)]
    folder = tmp_path / "RTE"
    _write_glue_like(folder, rows, ["index", "sentence1", "sentence2", "label"], "train.tsv")
    _write_glue_like(folder, rows[:10], ["index", "sentence1", "sentence2", "label"], "dev.tsv")
    cfg = make_cfg("task=rte", f"task.data_dir={folder}", "task.validation_size=8")
    splits = load_task(cfg.task)
    assert {s: len(splits[s]) for s in splits} == {"train": 32, "validation": 8, "test": 10}
    assert splits["test"].column_names == ["text", "text_pair", "label"]
    assert splits["test"]["label"][:2] == [0, 1]
    assert splits["test"]["text"][0] == 'premise "0"'


def test_validation_carve_is_the_same_for_every_run_seed(make_cfg, tmp_path):
    rows = [(f"sentence {i}", i % 2) for i in range(50)]
    _write_glue_like(tmp_path / "sst", rows, ["sentence", "label"], "train.tsv")
    _write_glue_like(tmp_path / "sst", rows[:5], ["sentence", "label"], "dev.tsv")
    carve = [
        load_task(
            make_cfg("task=sst2", f"task.data_dir={tmp_path / 'sst'}", "task.validation_size=10", f"seed={seed}").task
        )["validation"]["text"]
        for seed in (0, 1)
    ]
    assert carve[0] == carve[1]


def test_local_json_files_by_split(make_cfg, tmp_path):
    for split, n in (("train", 20), ("validation", 6), ("test", 6)):
        with open(tmp_path / f"{split}.jsonl", "w") as out:
            for i in range(n):
                out.write(json.dumps({"review": f"text {i}", "stars": i % 2}) + "\n")
    files = "{" + ",".join(f"{s}:{tmp_path / s}.jsonl" for s in ("train", "validation", "test")) + "}"
    cfg = make_cfg(
        "task=toy_sentiment",
        "task.generator=null",
        f"task.data_files={files}",
        "task.text_column=review",
        "task.label_column=stars",
    )
    splits = load_task(cfg.task)
    assert len(splits["validation"]) == 6 and splits["train"].features["label"].names == ["negative", "positive"]


def test_labels_outside_label_names_are_rejected(make_cfg, tmp_path):
    rows = [(f"sentence {i}", i % 3) for i in range(30)]
    _write_glue_like(tmp_path / "d", rows, ["sentence", "label"], "train.tsv")
    _write_glue_like(tmp_path / "d", rows, ["sentence", "label"], "dev.tsv")
    with pytest.raises(ConfigError) as caught:
        load_task(make_cfg("task=sst2", f"task.data_dir={tmp_path / 'd'}", "task.validation_size=5").task)
    assert caught.value.key == "task.label_names"


def test_tokenize_pairs_without_padding(make_cfg):
    cfg = make_cfg(
        "task=toy_entailment", "task.generator.n_train=8", "task.generator.n_validation=4", "task.generator.n_test=4"
    )
    tokenized = tokenize(load_task(cfg.task), load_tokenizer(cfg.model), max_length=64)
    row = tokenized["train"][0]
    assert set(row) >= {"input_ids", "attention_mask", "token_type_ids", "label"}
    assert 1 in row["token_type_ids"]  # the hypothesis is the second segment
    assert all(row["attention_mask"])  # no padding stored


# The real GLUE files in ../shared/data, when this checkout has them. Either
# the original distribution (TSV) or the Hub's export; folder names vary.
GLUE_FOLDER_NAMES = {
    "sst2": ("sst2", "sst-2"),
    "rte": ("rte",),
    "qnli": ("qnli",),
    "mrpc": ("mrpc",),
    "cola": ("cola",),
}


def _glue_folder(task: str):
    if not SHARED_DATA.is_dir():
        return None
    for folder in sorted(p for p in SHARED_DATA.rglob("*") if p.is_dir()):
        if folder.name.lower() in GLUE_FOLDER_NAMES[task] and any(folder.glob("train.*")):
            return folder
    return None


@pytest.mark.parametrize("task", ["sst2", "rte", "qnli"])
def test_real_glue_files_load_through_the_task_spec(make_cfg, task):
    folder = _glue_folder(task)
    if folder is None:
        pytest.skip(f"no {task} folder with train.* under {SHARED_DATA}")
    splits = load_task(make_cfg(f"task={task}", f"task.data_dir={folder}").task)
    assert len(splits["train"]) > 1000 and len(splits["test"]) > 100
    assert set(splits["train"]["label"]) == {0, 1}


def test_fingerprint_changes_with_content_not_with_reloading(make_cfg):
    from harness.data.fingerprint import fingerprint

    cfg = make_cfg("task.generator.n_train=50", "task.generator.n_validation=10", "task.generator.n_test=10")
    same = fingerprint(load_task(cfg.task)), fingerprint(load_task(cfg.task))
    assert same[0] == same[1] and set(same[0]) == {"train", "validation", "test"}
    noisier = make_cfg(
        "task.generator.n_train=50",
        "task.generator.n_validation=10",
        "task.generator.n_test=10",
        "task.generator.label_noise=0.3",
    )
    changed = fingerprint(load_task(noisier.task))
    assert changed["train"] != same[0]["train"]


# Rows of the original GLUE distribution (download_glue_data.py): train, dev. MRPC's train file holds 3,667 of the
# 3,668 pairs GLUE lists (see ../shared/data/README.md); the others are the official counts.
GLUE_ROWS = {"sst2": (67_349, 872), "mrpc": (3_667, 408), "rte": (2_490, 277), "cola": (8_551, 1_043)}


@pytest.mark.parametrize("task", sorted(GLUE_ROWS))
def test_glue_tasks_read_the_original_tsvs_with_their_official_row_counts(make_cfg, monkeypatch, tmp_path, task):
    """Unquoted TSVs (sentences hold quotes), CoLA without a header, MRPC with its own column names and a BOM."""
    if not (SHARED_DATA / task).is_dir():
        pytest.skip(f"no {task} folder in {SHARED_DATA}")
    monkeypatch.chdir(tmp_path)  # a relative data_root is the project's, not the working directory's
    cfg = make_cfg(f"task={task}", "data_root=../shared/data")
    raw = load_raw(cfg.task)
    assert (len(raw["train"]), len(raw["validation"])) == GLUE_ROWS[task]
    splits = load_task(cfg.task)
    train, dev = GLUE_ROWS[task]
    assert len(splits["test"]) == dev and len(splits["train"]) + len(splits["validation"]) == train
    assert set(splits["test"]["label"]) == {0, 1}
    assert all(text.strip() for text in splits["train"]["text"][:200])
    if task in ("mrpc", "rte"):
        assert all(pair.strip() for pair in splits["test"]["text_pair"])


def test_a_data_root_without_the_tasks_folder_is_a_one_line_error(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=rf"^data_root: no folder {tmp_path}/sst2 for task sst2"):
        load_task(make_cfg("task=sst2", f"data_root={tmp_path}").task)


def test_tokenized_splits_are_cached_by_data_tokenizer_and_length(tmp_path, monkeypatch, make_cfg):
    """The second run of a sweep on the same data, tokenizer and length reads the cache instead of tokenizing;
    changed data, another length or the cache switched off tokenize again, with identical results."""
    from datasets import Dataset, DatasetDict

    from harness import models, versions
    from harness.data import cache, tokens

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    tokenizer = models.load_tokenizer(make_cfg(*TINY).model)
    rows = {"text": ["a good film", "a bad one", "fine"], "label": [1, 0, 1]}
    splits = DatasetDict({"train": Dataset.from_dict(rows), "test": Dataset.from_dict(rows)})
    calls = []
    original = tokens._tokenize
    monkeypatch.setattr(tokens, "_tokenize", lambda *a: calls.append(a[2]) or original(*a))

    first = tokens.tokenize(splits, tokenizer, 16)
    second = tokens.tokenize(splits, tokenizer, 16)
    assert calls == [16] and second["train"]["input_ids"] == first["train"]["input_ids"]
    assert len(list((tmp_path / "cache" / "tokenized").iterdir())) == 1
    tokens.tokenize(splits, tokenizer, 8)  # another length: another entry
    edited = DatasetDict({name: split.map(lambda r: {"text": r["text"] + "!"}) for name, split in splits.items()})
    assert tokens.tokenize(edited, tokenizer, 16)["train"]["input_ids"] != first["train"]["input_ids"]
    assert calls == [16, 8, 16]
    monkeypatch.setattr(versions, "package_versions", lambda *names: dict.fromkeys(names, "99.0"))  # another release
    tokens.tokenize(splits, tokenizer, 16)
    assert calls == [16, 8, 16, 16]
    monkeypatch.setenv(cache.CACHE_ENV, "off")
    assert tokens.tokenize(splits, tokenizer, 16)["train"]["input_ids"] == first["train"]["input_ids"]
    assert calls == [16, 8, 16, 16, 16]


def test_loaded_splits_are_cached_by_file_bytes_spec_and_generator(tmp_path, monkeypatch, make_cfg):
    """A sweep's later runs read the loaded splits and their fingerprint from the cache; an edited file, another
    spec value or a Hub task (keyed by the datasets cache, not here) load again."""
    from harness.data import cache, load

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    rows = [(f"sentence {i}", i % 2) for i in range(50)]
    _write_glue_like(tmp_path / "sst", rows, ["sentence", "label"], "train.tsv")
    _write_glue_like(tmp_path / "sst", rows[:5], ["sentence", "label"], "dev.tsv")
    calls = []
    original = load.load_task
    monkeypatch.setattr(load, "load_task", lambda spec: calls.append(spec.name) or original(spec))
    task = make_cfg("task=sst2", f"task.data_dir={tmp_path / 'sst'}", "task.validation_size=10").task

    first, first_sha = load.load_fingerprinted(task)
    second, second_sha = load.load_fingerprinted(task)
    assert calls == ["sst2"] and second_sha == first_sha == load.fingerprint(first)
    assert second["train"]["text"] == first["train"]["text"]
    entry = next((tmp_path / "cache" / "loaded").iterdir())
    (entry / "extra.json").unlink()  # a lost fingerprint is recomputed from the cached splits and written back
    assert load.load_fingerprinted(task)[1] == first_sha and (entry / "extra.json").is_file() and calls == ["sst2"]
    task.validation_size = 12  # another carve: another entry
    assert len(load.load_fingerprinted(task)[0]["validation"]) == 12 and len(calls) == 2
    _write_glue_like(tmp_path / "sst", rows[:40], ["sentence", "label"], "train.tsv")  # the file edited
    assert load.load_fingerprinted(task)[1] != first_sha and len(calls) == 3

    toy = make_cfg("task=toy_sentiment", "task.generator.n_train=40").task
    load.load_fingerprinted(toy), load.load_fingerprinted(toy)
    assert calls.count("toy_sentiment") == 1
    toy.generator.seed = 7  # another generator config
    load.load_fingerprinted(toy)
    assert calls.count("toy_sentiment") == 2
    assert load._source_key(load.TaskSpec.from_config(make_cfg("task=sst2", "data_root=null").task)) is None
    assert load._generator_code("no_such_package.module.function") is None  # not cached; loading says why


def test_a_split_the_task_does_not_read_is_not_checked(tmp_path, make_cfg):
    """A GLUE folder holds an unlabelled test.tsv beside train.tsv and dev.tsv; a task that scores on dev never
    reads it, so its missing label column is no error."""
    rows = "sentence\tlabel\n" + "".join(f"film {i}\t{i % 2}\n" for i in range(8))
    (tmp_path / "train.tsv").write_text(rows)
    (tmp_path / "dev.tsv").write_text(rows)
    (tmp_path / "test.tsv").write_text("index\tsentence\n0\tunlabelled\n")
    cfg = make_cfg(
        "task=_local_classification", "+task.name=folder", f"task.data_dir={tmp_path}", "task.text_column=sentence",
        "task.label_names=[negative,positive]", "task.validation_size=2",
    )  # fmt: skip
    splits = load_task(cfg.task)
    assert len(splits["train"]) == 6 and len(splits["test"]) == 8
