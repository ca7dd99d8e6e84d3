"""The dataset registry: every corpus file the project may read, with where it comes from.

Paths are relative to a data root (a downloaded `data/raw/` or an offline mirror such as
`../shared/data`); sha256 sums are of the plain (decompressed) text, so a mirror and a
download verify against the same number.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CorpusFile:
    path: str  # relative to the data root
    # None: a file a script produces (the dataset's notes say which); it cannot be pinned, so it is
    # taken from REST_DATA_DIR as it is and checked for alignment and clean lines only.
    sha256: str | None
    lines: int | None
    url: str | None = None  # public download location; None = mirror only
    gzip: bool = False  # the URL serves a .gz of the file


@dataclass(frozen=True)
class Split:
    source: CorpusFile
    target: CorpusFile


@dataclass(frozen=True)
class Dataset:
    name: str
    source_lang: str
    target_lang: str
    splits: dict[str, Split]
    origin: str
    licence: str
    notes: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)


_M30K = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"


def _m30k(split: str, lang: str, sha: str, lines: int) -> CorpusFile:
    return CorpusFile(f"multi30k/{split}.{lang}", sha, lines, f"{_M30K}/{split}.{lang}.gz", gzip=True)


def _made(path: str) -> CorpusFile:
    """A file a script produces locally (the dataset's notes say how): no pinned sha256 or length."""
    return CorpusFile(path, None, None)


DATASETS: dict[str, Dataset] = {
    "multi30k_de_en": Dataset(
        name="multi30k_de_en",
        source_lang="de",
        target_lang="en",
        origin="github.com/multi30k/dataset data/task1/raw (task 1, cased, untokenized)",
        licence="research data; see the Multi30k repository",
        splits={
            "train": Split(
                _m30k("train", "de", "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72", 29000),
                _m30k("train", "en", "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6", 29000),
            ),
            "val": Split(
                _m30k("val", "de", "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660", 1014),
                _m30k("val", "en", "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227", 1014),
            ),
            "test_2016_flickr": Split(
                _m30k(
                    "test_2016_flickr", "de", "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16", 1000
                ),
                _m30k(
                    "test_2016_flickr", "en", "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182", 1000
                ),
            ),
        },
    ),
    "iwslt14_de_en": Dataset(
        name="iwslt14_de_en",
        source_lang="de",
        target_lang="en",
        origin=(
            "fairseq examples/translation/prepare-iwslt14.sh output (lowercased, Moses-tokenized); "
            "run that script to produce train/valid/test, then point REST_DATA_DIR at its parent"
        ),
        licence="TED talks: CC BY-NC-ND",
        notes=(
            "train (~160k pairs) is produced by fairseq's prepare-iwslt14.sh; no single-file public URL "
            "exists. Run the script, then copy its train.de/train.en to <REST_DATA_DIR>/iwslt14_de_en/"
        ),
        splits={
            "train": Split(
                CorpusFile("iwslt14_de_en/train.de", None, None), CorpusFile("iwslt14_de_en/train.en", None, None)
            ),
            "valid": Split(
                CorpusFile(
                    "iwslt14_de_en/valid.de", "3f051579c9d8c7281a6ea8c72ad4ae09dbaa9bb24dfd41166f2c3a3df7cd940a", 7283
                ),
                CorpusFile(
                    "iwslt14_de_en/valid.en", "e6d7317a9772cd1ed970910c611e9e7dada1f34439269b44a9d801334bff948d", 7283
                ),
            ),
            "test": Split(
                CorpusFile(
                    "iwslt14_de_en/test.de", "e718c783e33160b7d72af8f733756a466e0d0c016eff8ab624c1b0d1d01cbbdf", 6750
                ),
                CorpusFile(
                    "iwslt14_de_en/test.en", "4b127beb9050511a3e6209cd837ff36f623a3a423666b32aba6e208b7330cf4c", 6750
                ),
            ),
        },
    ),
    "wmt17_de_en": Dataset(
        name="wmt17_de_en",
        source_lang="de",
        target_lang="en",
        origin="WMT17 newstest2017 as redistributed in github.com/cyr19/MENLI experiments/datasets/WMT17",
        licence="WMT news test sets",
        splits={
            "test": Split(
                CorpusFile(
                    "wmt17_newstest/newstest2017.de-en.de",
                    "675e4f7e6045dacf56507e29b24106d771a571e0eb58d822806b086cdcf892f4",
                    3004,
                ),
                CorpusFile(
                    "wmt17_newstest/newstest2017.de-en.en",
                    "11adaec47477928dab9cb3fc9279d99dbbbfec7161f3abf6fddd759668fcd703",
                    3004,
                ),
            ),
        },
    ),
    "wmt17_zh_en": Dataset(
        name="wmt17_zh_en",
        source_lang="zh",
        target_lang="en",
        origin="WMT17 newstest2017 as redistributed in github.com/cyr19/MENLI experiments/datasets/WMT17",
        licence="WMT news test sets",
        splits={
            "test": Split(
                CorpusFile(
                    "wmt17_newstest/newstest2017.zh-en.zh",
                    "cdb2e71249ad0f39796d13e16723f6d2c4f71c6f3724806e1f46e7810f7355c0",
                    2001,
                ),
                CorpusFile(
                    "wmt17_newstest/newstest2017.zh-en.en",
                    "58c844d4e3c0baf7dd9b470868aa0f88ba3951a74be2fe98f7e11e19df622351",
                    2001,
                ),
            ),
        },
    ),
    "wmt20_zh_en": Dataset(
        name="wmt20_zh_en",
        source_lang="zh",
        target_lang="en",
        origin="WMT20 newstest2020 Zh-En (reference A) as in github.com/jbgruenwald/efficient-nlg-metrics",
        licence="WMT news test sets; training corpora under their own licences (statmt.org/wmt20)",
        notes=(
            "train and valid are assembled locally: the WMT20 Zh-En training corpora (statmt.org/wmt20/"
            "translation-task.html; e.g. `mtdata get -l zho-eng --train <the WMT20 set>`), deduplicated and "
            "written as one sentence per line to <REST_DATA_DIR>/wmt20_zh_en/train.zh and train.en; valid is "
            "newstest2019 (`sacrebleu -t wmt19 -l zh-en --echo src` / `--echo ref`) as "
            "newstest2019.zh-en.zh and newstest2019.zh-en.en"
        ),
        splits={
            "train": Split(
                CorpusFile("wmt20_zh_en/train.zh", None, None), CorpusFile("wmt20_zh_en/train.en", None, None)
            ),
            "valid": Split(
                _made("wmt20_zh_en/newstest2019.zh-en.zh"),
                _made("wmt20_zh_en/newstest2019.zh-en.en"),
            ),
            "test": Split(
                CorpusFile(
                    "wmt20_zh_en/newstest2020.zh-en.zh",
                    "1685b0bf076ca8f012b0729ac9b74ec626d6e4941dbc598da9ea1797d5e56ec8",
                    2000,
                ),
                CorpusFile(
                    "wmt20_zh_en/newstest2020.zh-en.en",
                    "622f9c4777743ac05bb8da8123134ec07d590486307e8b4affa22525cbb0ba17",
                    2000,
                ),
            ),
        },
    ),
}

# WMT15-17 segment-level DA judgements (year lp system sid src mt ref da_z): the reward
# model's training data in the Grow issue.
HUMAN_JUDGEMENTS = CorpusFile(
    "human_judgements/wmt15-17_da_seg.tsv",
    "fb818d5db6a7357b5595bc6067439427e5430779fb6eabcbd333ddd8dc427238",
    10708,
)


def get_dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset '{name}'; known: {', '.join(sorted(DATASETS))}") from None
