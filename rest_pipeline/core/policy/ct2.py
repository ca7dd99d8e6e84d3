"""CTranslate2 inference for policies: exact conversion, deterministic decoding and seeded sampling.

Every inference stage (Grow sampling, validation during training, evaluation) decodes here when the
spec says `ctranslate2`; Hugging Face `generate` stays the reference the tests compare against.
On CPU the work runs on several *lanes* (one single-threaded translator each): a small model spends
most of a decoding step in per-call overhead that a second thread does not share, so two lanes on
two cores do ~1.5-1.9x the work of one translator with two threads (bench/throughput_bench.py).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rest_pipeline.core.devices import keep_torch_threads
from rest_pipeline.core.paths import atomic_dir
from rest_pipeline.core.policy.ct2_lane import LanePool, sample_tokens
from rest_pipeline.core.policy.family import CausalLM, PromptFormat, Seq2Seq, Seq2SeqFormat
from rest_pipeline.core.policy.model import policy_config, weights_hash
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.spec import DecodingSpec

# Encoder-decoder families whose CTranslate2 outputs are checked equal to transformers' (greedy, float32):
# Marian, M2M100/NLLB (model_type m2m_100, the target code as target prefix), mBART (the code as the
# prefix that starts the decoder) and T5.
CT2_FAMILIES = ("marian", "m2m_100", "mbart", "t5")
CT2_LAYOUT = "exact-start-v1"  # part of the conversion cache key: bump when the conversion changes
CONVERTED_WEIGHTS_FILE = "rest_weights"  # the converted model.bin's hash, written with the conversion


def device() -> str:
    """'cpu' or 'cuda:<index>' (core/devices.py picks the GPU); `engine_device` splits it for CTranslate2."""
    from rest_pipeline.core.devices import ct2_device

    kind, index = ct2_device()
    return kind if kind == "cpu" else f"{kind}:{index}"


def engine_device(dev: str) -> dict[str, str | int]:
    """CTranslate2's device arguments for a `device()` string."""
    kind, _, index = dev.partition(":")
    return {"device": kind, "device_index": int(index or 0)}


def default_lanes() -> int:
    """Concurrent single-threaded translators on CPU (one per core, at most 4); one on CUDA."""
    return 1 if device().startswith("cuda") else max(1, min(os.cpu_count() or 1, 4))


def resolve_compute_type(compute_type: str) -> str:
    """A spec's compute type, or its nearest supported fallback on this device (fp16 types need CUDA)."""
    import ctranslate2

    supported = ctranslate2.get_supported_compute_types(device().partition(":")[0])
    if compute_type in supported:
        return compute_type
    fallback = {"float16": "float32", "bfloat16": "float32", "int8_float16": "int8", "int8_bfloat16": "int8"}
    return fallback.get(compute_type, "float32")


@contextlib.contextmanager
def _exact_loaders() -> Iterator[None]:
    """CTranslate2's Marian and mBART loaders, made to convert our checkpoints exactly.

    Marian: the stock loader drops <pad> from the vocabulary and starts decoding from a zero embedding,
    which matches opus-mt (whose pad row stays zero) but not our checkpoints: their embeddings are
    tied to the output layer, so the <pad> row (the decoder start token) is trained and non-zero.
    With the shortcut the first sampled token is wrong ("men stand ..." for "Two men stand ...").

    mBART: the stock loader reads fairseq's `normalize_before`, which transformers' MBartConfig no longer
    carries (a model made with it fails to convert); transformers' mBART is always pre-norm with an
    embedding layer norm. Our mBART starts its decoder from the target code (family.py), so the
    converted model has no start token of its own and takes the code, given as the target prefix.
    """
    from ctranslate2.converters import transformers as ct2t

    class ExactMarianLoader(ct2t.MarianMTLoader):
        def get_model_spec(self, model):
            model.config.normalize_before = False
            model.config.normalize_embedding = False
            return ct2t.BartLoader.get_model_spec(self, model)  # keep the <pad> row

        def set_config(self, config, model, tokenizer):
            super().set_config(config, model, tokenizer)
            config.decoder_start_token = tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id)

        def set_decoder(self, spec, decoder):
            ct2t.BartLoader.set_decoder(self, spec, decoder)
            spec.start_from_zero_embedding = False

        def get_vocabulary(self, model, tokenizer):
            return ct2t.BartLoader.get_vocabulary(self, model, tokenizer)

    class ExactMBartLoader(ct2t.MBartLoader):
        def get_model_spec(self, model):
            model.config.normalize_before = True
            model.config.normalize_embedding = True
            return super().get_model_spec(model)

        def set_config(self, config, model, tokenizer):
            super().set_config(config, model, tokenizer)
            config.decoder_start_token = None

    ours = {"MarianConfig": ExactMarianLoader(), "MBartConfig": ExactMBartLoader()}
    stock = {name: ct2t._MODEL_LOADERS[name] for name in ours}
    ct2t._MODEL_LOADERS.update(ours)
    try:
        yield
    finally:
        ct2t._MODEL_LOADERS.update(stock)


_CONVERT_LOCK = threading.Lock()  # the loader swaps above are process-global


@contextlib.contextmanager
def _heap_frozen() -> Iterator[None]:
    """CTranslate2's Llama-style loaders call gc.collect() twice per layer to free each converted layer;
    in a process holding Dagster and transformers a full collection scans the whole heap (~0.3 s here,
    24 of llm_smoke's 88 s). Frozen, the objects that existed before the conversion are left out of
    every collection, so each collect sees only what the conversion made, and still frees it."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _converter(path: str):
    """CTranslate2's converter for `path`, reading the folder's tokenizer as we do."""
    import ctranslate2

    class Converter(ctranslate2.converters.TransformersConverter):
        """Reads the folder's tokenizer as we do: a folder with only a SentencePiece model (no tokenizer.json)
        loads its slow tokenizer instead of converting it, which needs a protobuf comet's pins rule out."""

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return load_tokenizer(model_name_or_path)

    return Converter(path)


def convert(checkpoint: Path, out: Path, compute_type: str = "float32") -> Path:
    """Convert an HF checkpoint folder (a LoRA chain: its cached merge); weights are stored already
    quantized, so loading is a memory map. Decoder-only models become a CTranslate2 Generator."""

    from rest_pipeline.core.policy.model import merged_checkpoint

    quantization = None if compute_type == "float32" else compute_type
    source = merged_checkpoint(checkpoint)
    config = json.loads((source / "config.json").read_text()) if (source / "config.json").is_file() else {}
    if config.get("is_encoder_decoder") and config.get("model_type", "marian") not in CT2_FAMILIES:
        raise ValueError(
            f"{checkpoint}: a {config['model_type']} model; CTranslate2 decodes {', '.join(CT2_FAMILIES)} "
            "encoder-decoders here (outputs checked equal to transformers'); set grow.backend and "
            "evaluation.backend to hf"
        )
    with _CONVERT_LOCK, atomic_dir(out) as tmp, _exact_loaders(), _heap_frozen():
        try:
            _converter(str(source)).convert(str(tmp), quantization=quantization, force=True)
        except ValueError as e:
            if "No conversion is registered" not in str(e) and "not supported" not in str(e):
                raise
            raise ValueError(
                f"{checkpoint}: CTranslate2 cannot convert a {config.get('model_type')} model ({e}); "
                "set grow.backend and evaluation.backend to hf"
            ) from e
        engine_config = tmp / "config.json"
        written = json.loads(engine_config.read_text())
        if "bos_token" in written and written["bos_token"] is None:
            # A Generator needs a start token by name even when every prompt brings its own (our
            # SentencePiece vocabulary has no BOS): name EOS, which it then never inserts.
            written["bos_token"] = written["eos_token"]
            engine_config.write_text(json.dumps(written, indent=2))
    return out


def converted(checkpoint: Path, compute_type: str = "float32") -> Path:
    """The cached conversion of `checkpoint` (beside it), redone when its weights or our layout change."""
    checkpoint = Path(checkpoint)
    out = checkpoint.parent / f".{checkpoint.name}.ct2-{compute_type}"
    stamp = f"{CT2_LAYOUT}:{weights_hash(checkpoint)}"
    marker = out / "rest_source"
    if not marker.is_file() or marker.read_text() != stamp:
        from filelock import FileLock

        with FileLock(str(out.with_name(out.name + ".lock"))):  # two steps may need it at once
            if not marker.is_file() or marker.read_text() != stamp:
                convert(checkpoint, out, compute_type)
                (out / CONVERTED_WEIGHTS_FILE).write_text(_file_hash(out / "model.bin"))  # for lineage, once
                marker.write_text(stamp)
    return out


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()[:16]


class CT2Policy:
    """A converted policy plus its tokenizer: greedy/beam translation and seeded sampling."""

    def __init__(
        self,
        model_dir: Path,
        tokenizer: PreTrainedTokenizerBase,
        *,
        compute_type: str = "float32",
        lanes: int | None = None,
        max_source_length: int = 128,
        hf_config: dict | None = None,
    ):
        self.model_dir = Path(model_dir)
        self.tokenizer = tokenizer
        # The family (from the checkpoint's own config) encodes sources (a language code, a task prefix)
        # and names the target code every output starts with.
        config = hf_config or {}
        # A decoder-only LM (its config carries the prompt, family.py) runs as a Generator continuing
        # each prompt until one of its end tokens.
        self.causal = bool(config.get("rest_prompt"))
        self.family: Seq2Seq | CausalLM
        self.target_prefix: list[str] | None = None
        self.end_ids: list[int] | None = None
        if self.causal:
            self.family = CausalLM(tokenizer, PromptFormat(**(config.get("rest_prompt") or {})))
            self.end_ids = sorted(self.family.stops)
        else:
            fmt = Seq2SeqFormat(**(config.get("rest_seq2seq") or {}))
            self.family = Seq2Seq(tokenizer, 0, fmt, config.get("model_type", "marian"))
            code = self.family.target_code_id
            self.target_prefix = tokenizer.convert_ids_to_tokens([code]) if code is not None else None
        # HF's generate writes EOS as the last of max_new_tokens when the config forces one (Marian, BART): an
        # output that reaches the cap has one text token fewer there than CTranslate2's.
        self.forced_eos = not self.causal and config.get("forced_eos_token_id") is not None
        self.compute_type = resolve_compute_type(compute_type)
        self.device = device()
        self.lanes = lanes or default_lanes()
        self.max_source_length = max_source_length
        self._translator = None
        self._pool: LanePool | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, checkpoint: Path, compute_type: str = "float32", **kw) -> CT2Policy:
        compute_type = resolve_compute_type(compute_type)
        config = policy_config(Path(checkpoint))
        ct2_dir = converted(checkpoint, compute_type)
        return cls(ct2_dir, load_tokenizer(checkpoint), compute_type=compute_type, hf_config=config, **kw)

    @classmethod
    @contextlib.contextmanager
    def from_model(
        cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, compute_type: str = "float32", **kw
    ) -> Iterator[CT2Policy]:
        """A policy for weights still in training (validation): converted into a temporary folder."""
        from rest_pipeline.core.policy.model import save_policy

        with tempfile.TemporaryDirectory(prefix="rest-ct2-") as d:
            save_policy(model, tokenizer, Path(d) / "hf")
            compute_type = resolve_compute_type(compute_type)
            ct2_dir = convert(Path(d) / "hf", Path(d) / "ct2", compute_type)
            yield cls(ct2_dir, tokenizer, compute_type=compute_type, hf_config=model.config.to_dict(), **kw)

    def tokens(self, sources: Sequence[str]) -> list[list[str]]:
        ids = self.family.encode_sources(list(sources), self.max_source_length)
        return [self.tokenizer.convert_ids_to_tokens(x) for x in ids]

    def _detok(self, output: Sequence[str] | Sequence[int]) -> str:
        """One output's text: a Translator's tokens, or a Generator's completion ids."""
        ids = output if self.causal else self.tokenizer.convert_tokens_to_ids(list(output))
        return self.family.decode([list(ids) + [self.family.eos_id]])[0]

    def _new_translator(self, inter: int):
        """`inter` translators (or generators) in one; each thread gets its share of the cores."""
        import ctranslate2

        intra = 0 if self.device.startswith("cuda") else max(1, (os.cpu_count() or 1) // self.lanes)
        engine = ctranslate2.Generator if self.causal else ctranslate2.Translator
        with keep_torch_threads():
            return engine(
                str(self.model_dir),
                **engine_device(self.device),
                compute_type=self.compute_type,
                inter_threads=inter,
                intra_threads=intra,
            )

    def translate(
        self,
        sources: Sequence[str],
        decoding: DecodingSpec,
        *,
        batch_tokens: int = 6000,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[str]:
        """Deterministic decoding (greedy or beam), in input order; equals HF `generate` at float32."""
        if not sources:
            return []
        if self._translator is None:
            self._translator = self._new_translator(self.lanes)
        search = {"max_batch_size": max(batch_tokens // decoding.num_beams, 64), "batch_type": "tokens",
                  "beam_size": decoding.num_beams, "length_penalty": decoding.length_penalty}  # fmt: skip
        if self.causal:
            generated = self._translator.generate_batch(
                self.tokens(sources),
                max_length=decoding.max_new_tokens,
                end_token=self.end_ids,
                include_prompt_in_result=False,
                **search,
            )
            if progress:
                progress(len(sources), len(sources))
            return [self._detok(r.sequences_ids[0]) for r in generated]
        results = self._translator.translate_batch(
            self.tokens(sources),
            max_decoding_length=decoding.max_new_tokens,
            suppress_sequences=[[self.tokenizer.pad_token]],  # like HF's bad_words_ids in our configs
            target_prefix=[self.target_prefix] * len(sources) if self.target_prefix else None,
            **search,
        )
        if progress:
            progress(len(sources), len(sources))
        keep = self._kept_tokens(decoding.max_new_tokens)
        return [self._detok(r.hypotheses[0][:keep]) for r in results]

    def sample(
        self,
        sources: Sequence[str],
        n: int,
        *,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        max_new_tokens: int,
        seed: int,
    ) -> list[list[str]]:
        """`n` samples per source; they depend on (inputs, settings, seed) only, not on the lane that ran
        them (ct2_lane.py says why lanes are processes). Safe to call from several threads at once."""
        args = (
            str(self.model_dir),
            self.device,
            self.compute_type,
            # One thread per lane on CPU whatever the core count: samples then do not depend on the machine.
            0 if self.device.startswith("cuda") else 1,
            self.tokens(sources),
            n,
            temperature,
            top_k or 0,
            top_p or 1.0,
            max_new_tokens,
            # Like HF's bad_words_ids in our Marian configs; a causal LM's generate suppresses nothing.
            None if self.causal else [[self.tokenizer.pad_token]],
            seed,
            self.target_prefix,
            self.end_ids,
        )
        if self.lanes == 1:
            hyps = sample_tokens(*args)
        else:
            hyps = self._lane_pool().run(args)
        keep = self._kept_tokens(max_new_tokens)
        return [[self._detok(h[:keep]) for h in r] for r in hyps]

    def _kept_tokens(self, max_new_tokens: int) -> int:
        """Text tokens HF's generate leaves of a capped output: one fewer where the config forces EOS."""
        return max_new_tokens - 1 if self.forced_eos else max_new_tokens

    def engine_record(self, checkpoint: Path) -> dict[str, str]:
        """What lineage says ran: CTranslate2's version, the converted weights' hash and, for a LoRA
        chain, the merged folder's (core/policy/model.py `merged_checkpoint`)."""
        import ctranslate2

        from rest_pipeline.core.policy.model import merged_checkpoint, merged_weights_hash

        recorded = self.model_dir / CONVERTED_WEIGHTS_FILE
        weights = recorded.read_text() if recorded.is_file() else _file_hash(self.model_dir / "model.bin")
        record = {"engine": "ctranslate2", "version": ctranslate2.__version__, "compute_type": self.compute_type,
                  "weights": weights}  # fmt: skip
        merged = merged_checkpoint(checkpoint)
        if merged != Path(checkpoint):
            record["merged"] = merged_weights_hash(merged)
        return record

    def close(self) -> None:
        """Stop the sampling lanes now (they also stop when the policy is garbage-collected)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def _lane_pool(self) -> LanePool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = LanePool(self.lanes)
                weakref.finalize(self, self._pool.close)
            return self._pool
