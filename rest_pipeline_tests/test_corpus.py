import hashlib
import os
import re

import pandas as pd
import pytest

from rest_pipeline.core.corpus.fetch import FetchError, fetch
from rest_pipeline.core.corpus.registry import DATASETS, CorpusFile, get_dataset
from rest_pipeline.core.corpus.splits import prepare_split, source_id
from rest_pipeline.core.corpus.validate import CorpusError, read_parallel
from rest_pipeline.core.spec_check import data_problems
from rest_pipeline.spec import DataSpec, LinePolicy
from rest_pipeline_tests.conftest import write_lines
from rest_pipeline_tests.synthetic import MULTI30K

REJECT = LinePolicy()
SKIP = LinePolicy(empty="skip", overlong="skip", undecodable="skip", max_chars=20)


def test_clean_pair_reads(tmp_path):
    s = write_lines(tmp_path / "a.de", ["Hallo Welt", "Guten Tag"])
    t = write_lines(tmp_path / "a.en", ["Hello world", "Good day"])
    out = read_parallel(s, t, REJECT, expected_lines=2)
    assert out.sources == ["Hallo Welt", "Guten Tag"]
    assert out.line_numbers == [1, 2]
    assert out.skipped == {}


def test_misaligned_names_both_files(tmp_path):
    s = write_lines(tmp_path / "a.de", ["eins", "zwei", "drei"])
    t = write_lines(tmp_path / "a.en", ["one", "two"])
    with pytest.raises(CorpusError) as e:
        read_parallel(s, t, REJECT)
    assert "a.de has 3 lines" in str(e.value) and "a.en has 2" in str(e.value)


def test_expected_line_count(tmp_path):
    s = write_lines(tmp_path / "a.de", ["eins"])
    t = write_lines(tmp_path / "a.en", ["one"])
    with pytest.raises(CorpusError, match="expected 5 lines"):
        read_parallel(s, t, REJECT, expected_lines=5)


def test_empty_line_rejected_with_file_and_line(tmp_path):
    s = write_lines(tmp_path / "a.de", ["eins", "   ", "drei"])
    t = write_lines(tmp_path / "a.en", ["one", "two", "three"])
    with pytest.raises(CorpusError, match=r"a\.de:2: empty or whitespace-only"):
        read_parallel(s, t, REJECT)


def test_skip_policy_counts_every_drop(tmp_path):
    s = write_lines(tmp_path / "a.de", b"eins\n\nzwei\n" + b"\xff\xfe kaputt\n" + b"x" * 30 + b"\nvier\n")
    t = write_lines(tmp_path / "a.en", ["one", "two", "", "broken", "long", "four"])
    out = read_parallel(s, t, SKIP)
    assert out.sources == ["eins", "vier"]
    assert out.line_numbers == [1, 6]
    assert out.skipped_counts == {"empty": 2, "undecodable": 1, "overlong": 1}
    assert out.skipped["undecodable"] == [f"{s}:4"]
    assert out.skipped["empty"] == [f"{s}:2", f"{t}:3"]


def test_undecodable_rejected(tmp_path):
    s = write_lines(tmp_path / "a.de", b"gut\n\xc3\x28 schlecht\n")
    t = write_lines(tmp_path / "a.en", ["good", "bad"])
    with pytest.raises(CorpusError, match=r"a\.de:2: invalid UTF-8"):
        read_parallel(s, t, REJECT)


def test_overlong_rejected(tmp_path):
    s = write_lines(tmp_path / "a.de", ["kurz", "y" * 50])
    t = write_lines(tmp_path / "a.en", ["short", "long"])
    with pytest.raises(CorpusError, match=r"a\.de:2: line has 50 characters"):
        read_parallel(s, t, LinePolicy(max_chars=20))


def test_crlf_and_no_final_newline(tmp_path):
    s = write_lines(tmp_path / "a.de", b"eins\r\nzwei")
    t = write_lines(tmp_path / "a.en", b"one\r\ntwo")
    assert read_parallel(s, t, REJECT).targets == ["one", "two"]


def test_mirror_fetch_verifies_sha(tmp_path, data_dir):
    entry = DATASETS["multi30k_de_en"].splits["val"].source
    assert fetch(entry, mirror=data_dir) == data_dir / entry.path
    bad = CorpusFile(entry.path, "0" * 64, entry.lines)
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(bad, mirror=data_dir)
    with pytest.raises(FetchError, match="not found in REST_DATA_DIR"):
        fetch(CorpusFile("nope/missing.txt", "0" * 64, 1), mirror=tmp_path)


def test_prepare_split_real_data_stable_ids(tmp_path, data_dir):
    data = MULTI30K
    info = prepare_split(data, "valid", tmp_path / "valid.parquet", mirror=data_dir)
    assert info.rows == 1014 and info.skipped == {}
    df = pd.read_parquet(info.path)
    assert df.source_id.iloc[0] == source_id("multi30k_de_en", "val", 1)
    assert df.source_id.is_unique
    first_de = (data_dir / "multi30k/val.de").read_text(encoding="utf-8").split("\n")[0]
    assert df.source.iloc[0] == first_de.strip()
    again = prepare_split(data, "valid", tmp_path / "again" / "valid.parquet", mirror=data_dir)
    assert hashlib.sha256(info.path.read_bytes()).digest() == hashlib.sha256(again.path.read_bytes()).digest()


def test_wrong_language_pair_and_split(tmp_path, data_dir):
    """A spec names them wrong: refused when the spec is checked (core/spec_check.py); and prepare_split
    checks again for callers that never check."""
    wrong_pair = dict(dataset="multi30k_de_en", source_lang="en", target_lang="de", train="train", valid="val")
    wrong_split = dict(dataset="multi30k_de_en", source_lang="de", target_lang="en", train="train", valid="dev")
    for fields, why in [(wrong_pair, "is de->en"), (wrong_split, "has no split 'dev'")]:
        unchecked = DataSpec(**fields, test="test_2016_flickr")
        assert any(re.search(why, msg) for _, msg in data_problems(unchecked))
        with pytest.raises(ValueError, match="dataset 'multi30k_de_en' is de->en|no split 'dev'"):
            prepare_split(unchecked, "valid", tmp_path / "valid.parquet", mirror=data_dir)


def test_every_registered_file_matches_the_mirror(data_dir):
    """The registry's sums and line counts are the real ones (shared/data/README.md); files a script
    makes (no pinned sum) are named in their dataset's notes instead."""
    pinned = 0
    for ds in DATASETS.values():
        for split in ds.splits.values():
            for f in (split.source, split.target):
                if f.sha256 is None:
                    assert f.lines is None and f.path.rsplit("/", 1)[-1] in ds.notes, f.path
                    continue
                pinned += 1
                path = fetch(f, mirror=data_dir)
                assert path.read_bytes().count(b"\n") == f.lines, f.path
    assert pinned >= 14


def test_a_bad_split_leaves_no_split_written(tmp_path, data_dir):
    """All splits are read and validated before any is written: a corrupted test file leaves no train or
    valid Parquet of the new spec behind; what is written gets the user's usual file modes, not 0600."""
    import shutil

    from rest_pipeline.core.corpus.splits import prepare_splits
    from rest_pipeline.core.paths import UMASK

    mirror = tmp_path / "mirror"
    shutil.copytree(data_dir / "multi30k", mirror / "multi30k")
    test_file = mirror / DATASETS["multi30k_de_en"].splits["test_2016_flickr"].target.path
    test_file.write_text(test_file.read_text(encoding="utf-8") + "one line too many\n", encoding="utf-8")
    data = MULTI30K.model_copy(update={"max_train_pairs": 200, "max_eval_pairs": 50})
    out = tmp_path / "corpus"
    with pytest.raises(FetchError, match="sha256 mismatch"):
        prepare_splits(data, lambda role: out / f"{role}.parquet", mirror=mirror)
    assert not out.exists() or not list(out.glob("*.parquet"))
    written = prepare_splits(data, lambda role: out / f"{role}.parquet", mirror=data_dir)
    assert sorted(p.name for p in out.glob("*.parquet")) == ["test.parquet", "train.parquet", "valid.parquet"]
    assert os.stat(written["train"].path).st_mode & 0o777 == 0o666 & ~UMASK


def test_fetch_errors_are_one_line(tmp_path, data_dir):
    """`rest fetch` of an unknown dataset or of a corrupted file: one line naming it, no traceback."""
    import shutil
    import subprocess
    import sys

    env = {**os.environ, "REST_DATA_DIR": str(tmp_path / "mirror")}
    shutil.copytree(data_dir / "multi30k", tmp_path / "mirror" / "multi30k")
    (tmp_path / "mirror" / "multi30k" / "val.de").write_text("tampered\n", encoding="utf-8")
    cli = [sys.executable, "-m", "rest_pipeline.cli", "fetch"]
    unknown = subprocess.run([*cli, "nosuch"], env=env, capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown dataset nosuch" in unknown.stderr
    assert "Traceback" not in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
    bad = subprocess.run([*cli, "multi30k_de_en"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "sha256 mismatch" in bad.stderr and "val.de" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_script_made_splits_are_named_and_explained_when_missing(tmp_path, data_dir):
    """IWSLT14's train split is made by fairseq's script: `rest fetch` of everything says it is not here
    and goes on; asked for by name, it fails and says how the file is made."""
    import subprocess
    import sys

    env = {**os.environ, "REST_DATA_DIR": str(data_dir)}
    cli = [sys.executable, "-m", "rest_pipeline.cli", "fetch"]
    everything = subprocess.run(cli, env=env, capture_output=True, text=True)
    assert everything.returncode == 0, everything.stderr
    assert "iwslt14_de_en/train: not here (made by a script" in everything.stdout
    assert "iwslt14_de_en/valid:" in everything.stdout and "human_judgements:" in everything.stdout
    named = subprocess.run([*cli, "iwslt14_de_en"], env=env, capture_output=True, text=True)
    assert named.returncode == 1 and "prepare-iwslt14.sh" in named.stderr and "train.de" in named.stderr
    assert "Traceback" not in named.stderr
    # A script-made file that is there is read like any other: aligned, clean, no sha256 to match.
    mirror = tmp_path / "mirror" / "iwslt14_de_en"
    mirror.mkdir(parents=True)
    for lang in ("de", "en"):
        (mirror / f"train.{lang}").write_text(f"ein satz {lang}\nnoch einer {lang}\n", encoding="utf-8")
    made = get_dataset("iwslt14_de_en").splits["train"].source
    assert fetch(made, mirror=tmp_path / "mirror") == mirror / "train.de"
