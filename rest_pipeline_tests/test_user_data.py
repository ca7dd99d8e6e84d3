"""A user's own corpus from files (data.files): every format, the seeded carve-out, the line policy by
file and line, the spec's checks, and a data file that changes after the corpus was built."""

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rest_pipeline.core.base_stage import build_corpus
from rest_pipeline.core.corpus.splits import prepare_splits
from rest_pipeline.core.corpus.validate import CorpusError
from rest_pipeline.core.spec_check import check_spec
from rest_pipeline.core.store.experiment import ExperimentStore
from rest_pipeline.spec import DataSpec, SpecError, load_spec
from rest_pipeline_tests.synthetic import pairs

SRC, TGT = pairs(60, seed=3)


def data(files: dict, **extra) -> DataSpec:
    return DataSpec(source_lang="de", target_lang="en", files=files, **extra)


def read(tmp_path: Path, spec: DataSpec, seed: int = 0):
    out = tmp_path / "splits"
    infos = prepare_splits(spec, lambda role: out / f"{role}.parquet", seed=seed)
    return infos, {r: pq.read_table(out / f"{r}.parquet").to_pydict() for r in infos}


def write_tsv(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def write_save_to_disk(folder: Path, table: pa.Table) -> Path:
    """The layout datasets' Dataset.save_to_disk writes: Arrow stream shards listed in state.json."""
    folder.mkdir(parents=True)
    with (
        pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as writer,
    ):
        writer.write_table(table)
    (folder / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": None})
    )
    (folder / "dataset_info.json").write_text("{}")
    return folder


def test_a_two_column_tsv_with_seeded_carve_out_of_valid_and_test(tmp_path):
    tsv = write_tsv(tmp_path / "corpus.tsv", [f"{s}\t{t}" for s, t in zip(SRC, TGT, strict=True)])
    spec = data({"train": str(tsv), "carve_pairs": 10})
    infos, splits = read(tmp_path, spec, seed=4)
    assert {r: i.rows for r, i in infos.items()} == {"train": 40, "valid": 10, "test": 10}
    assert infos["valid"].name == "carved from train (seed 4, 10 pairs)"
    ids = [i for r in splits.values() for i in r["source_id"]]
    assert len(set(ids)) == 60 and all(i.startswith("corpus.tsv/") for i in ids)  # disjoint, by file and line
    line = splits["valid"]["line"][0]
    assert (splits["valid"]["source"][0], splits["valid"]["target"][0]) == (SRC[line - 1], TGT[line - 1])
    again = read(tmp_path / "again", spec, seed=4)[1]
    assert again["valid"]["source_id"] == splits["valid"]["source_id"]  # seeded: the same carve-out
    assert read(tmp_path / "other", spec, seed=5)[1]["valid"]["source_id"] != splits["valid"]["source_id"]


def test_tsv_header_jsonl_parquet_plain_text_and_a_save_to_disk_folder_read_the_same_pairs(tmp_path):
    n = 12
    header = write_tsv(
        tmp_path / "h.tsv",
        ["id\tde\ten"] + [f"{i}\t{s}\t{t}" for i, (s, t) in enumerate(zip(SRC[:n], TGT[:n], strict=True))],
    )
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"de": s, "en": t, "other": 1}) + "\n" for s, t in zip(SRC[:n], TGT[:n], strict=True))
    )
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"de": SRC[:n], "en": TGT[:n]}), parquet)
    (tmp_path / "c.de").write_text("\n".join(SRC[:n]) + "\n")
    (tmp_path / "c.en").write_text("\n".join(TGT[:n]) + "\n")
    folder = write_save_to_disk(tmp_path / "hf", pa.table({"de": SRC[:n], "en": TGT[:n]}))
    entries = [
        str(header),
        str(jsonl),
        str(parquet),
        {"source": str(tmp_path / "c.de"), "target": str(tmp_path / "c.en")},
        str(folder),
    ]
    for k, entry in enumerate(entries):
        fields = {} if isinstance(entry, dict) else {"source_field": "de", "target_field": "en"}
        spec = data({"train": entry, "valid": entry, "test": entry, **fields})
        _, splits = read(tmp_path / f"r{k}", spec)
        assert (splits["train"]["source"], splits["train"]["target"]) == (SRC[:n], TGT[:n]), entry


def test_a_datasetdict_folder_gives_each_role_its_split(tmp_path):
    root = tmp_path / "dd"
    for name, (lo, hi) in {"train": (0, 30), "validation": (30, 40), "test": (40, 50)}.items():
        write_save_to_disk(root / name, pa.table({"source": SRC[lo:hi], "target": TGT[lo:hi]}))
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation", "test"]}))
    infos, splits = read(tmp_path, data({"train": str(root), "valid": str(root), "test": str(root)}))
    assert {r: i.rows for r, i in infos.items()} == {"train": 30, "valid": 10, "test": 10}
    assert splits["valid"]["source"] == SRC[30:40]


@pytest.mark.parametrize(
    "name,content,fields,message",
    [
        ("ragged.tsv", "a\tb\nc\td\te\n", {}, r"ragged.tsv:2: 3 tab-separated columns, expected 2"),
        ("one.tsv", "a\tb\nc\n", {}, r"one.tsv:2: 1 tab-separated columns"),
        ("miss.jsonl", '{"source": "a", "target": "b"}\n{"source": "c"}\n', {}, r"miss.jsonl:2: no field 'target'"),
        ("bad.jsonl", '{"source": "a", "target": "b"}\n{"source": \n', {}, r"bad.jsonl:2: not a JSON object"),
        ("num.jsonl", '{"source": "a", "target": 3}\n', {}, r"num.jsonl:1: field 'target' is int, not text"),
        ("empty.tsv", "a\tb\n\t\n", {}, r"empty.tsv:2: empty or whitespace-only line \(data.lines.empty=reject"),
    ],
)
def test_bad_files_are_refused_by_file_and_line_and_nothing_is_written(tmp_path, name, content, fields, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CorpusError, match=message):
        read(tmp_path, data({"train": str(path), "valid": str(path), "test": str(path), **fields}))
    assert not (tmp_path / "splits").exists()


def test_misaligned_text_files_and_a_missing_parquet_column_name_the_file(tmp_path):
    (tmp_path / "a.de").write_text("x\ny\n")
    (tmp_path / "a.en").write_text("x\n")
    pair = {"source": str(tmp_path / "a.de"), "target": str(tmp_path / "a.en")}
    with pytest.raises(CorpusError, match=r"misaligned corpus: .*a.de has 2 lines but .*a.en has 1"):
        read(tmp_path, data({"train": pair, "valid": pair, "test": pair}))
    pq.write_table(pa.table({"source": ["a"], "tgt": ["b"]}), tmp_path / "p.parquet")
    p = str(tmp_path / "p.parquet")
    with pytest.raises(CorpusError, match=r"p.parquet: no field 'target' \(columns: source, tgt"):
        read(tmp_path, data({"train": p, "valid": p, "test": p}))


def test_skip_counts_bad_lines_instead(tmp_path):
    tsv = write_tsv(tmp_path / "c.tsv", ["a b\tc d", "\t", "e\tf", "g\t" + "x" * 50])
    spec = data(
        {"train": str(tsv), "valid": str(tsv), "test": str(tsv)},
        lines={"empty": "skip", "overlong": "skip", "max_chars": 20},
    )
    infos, splits = read(tmp_path, spec)
    assert splits["train"]["line"] == [1, 3] and infos["train"].skipped == {"empty": 1, "overlong": 1}


def spec_file(folder: Path, data_section: dict) -> Path:
    raw = yaml.safe_load(Path(__file__).resolve().parent.parent.joinpath("rest_pipeline/specs/smoke.yaml").read_text())
    raw["data"] = {"source_lang": "de", "target_lang": "en", **data_section}
    path = folder / "mine.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_spec_reads_relative_paths_from_its_folder_and_names_bad_fields(tmp_path):
    write_tsv(tmp_path / "corpus.tsv", [f"{s}\t{t}" for s, t in zip(SRC, TGT, strict=True)])
    spec = load_spec(spec_file(tmp_path, {"files": {"train": "corpus.tsv"}}))
    assert spec.data.files.train == str(tmp_path / "corpus.tsv")
    check_spec(spec, "mine.yaml")
    with pytest.raises(SpecError, match=r"field 'data.files.valid': .*nope.tsv: no such file"):
        check_spec(load_spec(spec_file(tmp_path, {"files": {"train": "corpus.tsv", "valid": "nope.tsv"}})), "x")
    (tmp_path / "corpus.txt").write_text("a\tb\n")
    with pytest.raises(SpecError, match=r"field 'data.files.train': .*cannot tell the format from the suffix '.txt'"):
        check_spec(load_spec(spec_file(tmp_path, {"files": {"train": "corpus.txt"}})), "x")
    with pytest.raises(SpecError, match="exactly one of data.dataset"):
        load_spec(spec_file(tmp_path, {"dataset": "multi30k_de_en", "train": "train", "valid": "val", "test": "x",
                                       "files": {"train": "corpus.tsv"}}))  # fmt: skip


def test_a_data_file_changed_after_the_corpus_is_named_and_the_corpus_rebuilt_from_it(tmp_path):
    tsv = write_tsv(tmp_path / "corpus.tsv", [f"{s}\t{t}" for s, t in zip(SRC, TGT, strict=True)])
    spec = load_spec(spec_file(tmp_path, {"files": {"train": "corpus.tsv", "carve_pairs": 5}}))
    store = ExperimentStore(tmp_path / "exp")
    said: list[str] = []
    record = build_corpus(spec, store, log=said.append)
    assert record.dataset == "files" and set(record.files) == {str(tsv)} and len(record.files[str(tsv)]) == 64
    assert build_corpus(spec, store, log=said.append).files == record.files and said == []  # unchanged: silent
    write_tsv(tsv, [f"{s}\t{t}" for s, t in zip(SRC, TGT, strict=True)][:-1] + ["geändert\tchanged"])
    rebuilt = build_corpus(spec, store, log=said.append)
    assert len(said) == 1 and said[0].startswith(f"corpus: {tsv}: changed since the corpus was built")
    assert rebuilt.files[str(tsv)] != record.files[str(tsv)]
    assert "geändert" in set(store.split("train").source) | set(store.split("valid").source) | set(
        store.split("test").source
    )


def test_the_registry_datasets_still_need_their_split_names():
    with pytest.raises(ValueError, match=r"needs split names for data.valid, data.test"):
        DataSpec(dataset="multi30k_de_en", source_lang="de", target_lang="en", train="train")


class _Hub(BaseHTTPRequestHandler):
    """The two requests huggingface_hub makes for a dataset file at a revision (HEAD, then GET)."""

    files: dict[str, bytes] = {}
    commit = "0123456789abcdef0123456789abcdef01234567"

    def log_message(self, *args) -> None:
        pass

    def _answer(self, body: bool) -> None:
        data = type(self).files.get(self.path.split("?")[0])
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", type(self).commit)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)


READ_HUB = """
import json, sys
from pathlib import Path
from rest_pipeline.core.corpus.splits import prepare_splits
from rest_pipeline.core.corpus.validate import CorpusError
from rest_pipeline.spec import DataSpec
spec = DataSpec(source_lang="de", target_lang="en", files={"train": sys.argv[1], "carve_pairs": 5})
try:
    infos = prepare_splits(spec, lambda r: Path(sys.argv[2]) / f"{r}.parquet", seed=1)
    print(json.dumps({r: i.rows for r, i in infos.items()}))
except CorpusError as e:
    print("ERROR", e)
"""


def test_a_hub_dataset_file_at_a_pinned_revision_is_fetched_once_and_read_offline_after(tmp_path):
    rows = "".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in zip(SRC, TGT, strict=True))
    _Hub.files = {"/datasets/acme/pairs/resolve/v1/train.jsonl": rows.encode()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"}

    def read(entry: str, offline: str, out: str) -> str:
        run = subprocess.run([sys.executable, "-c", READ_HUB, entry, str(tmp_path / out)], capture_output=True,
                             text=True, env={**env, "HF_HUB_OFFLINE": offline}, timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        return run.stdout.strip()

    try:
        assert read("hf://datasets/acme/pairs@v1/train.jsonl", "0", "a") == '{"train": 50, "valid": 5, "test": 5}'
    finally:
        server.shutdown()
    # Fetched once: read again with the hub gone and the machine offline, from the cache.
    assert read("hf://datasets/acme/pairs@v1/train.jsonl", "1", "b") == '{"train": 50, "valid": 5, "test": 5}'
    missing = read("hf://datasets/acme/pairs@v2/train.jsonl", "1", "c")
    assert missing.startswith("ERROR") and "not in the local Hugging Face cache" in missing
    with pytest.raises(SpecError, match=r"field 'data.files.train': .*the revision, a commit or tag, is required"):
        check_spec(load_spec(spec_file(tmp_path, {"files": {"train": "hf://datasets/acme/pairs/train.jsonl"}})), "x")
