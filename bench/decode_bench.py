"""Decoding candidates' ids to text, old and new path side by side in one run: transformers'
`batch_decode(skip_special_tokens=True)` (what the family's decode called before) against
`decode_skipping_special` (special ids dropped first; the same text, checked here on every output).
Every grow decodes each of its candidates once in the main process (192k per grow on the default).

    .venv/bin/python bench/decode_bench.py --experiment data/experiments/default [--repeats 5]

Inputs: the default's own kind of output, the reference translations of its validation pairs (1,014)
encoded by its BC policy's tokenizer (EOS and pad appended as the sampler's ids
carry them). Writes bench/results/decode.json (no absolute paths): ms per output, median of --repeats.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from rest_pipeline.core.policy.family import decode_skipping_special
from rest_pipeline.core.policy.tokenizer import load_tokenizer
from rest_pipeline.core.store.experiment import ExperimentStore

OUT = Path(__file__).resolve().parent / "results" / "decode.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiment", type=Path, required=True, help="an experiment folder with a BC policy")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    store = ExperimentStore(args.experiment)
    tok = load_tokenizer(store.policy("base"))
    targets = store.split("valid")["target"].tolist()
    ids = [x + [tok.pad_token_id] for x in tok(text_target=targets)["input_ids"]]

    def timed(fn) -> tuple[float, list[str]]:
        runs, out = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = fn(ids)
            runs.append((time.perf_counter() - start) * 1000 / len(ids))
        return statistics.median(runs), out

    old_ms, old = timed(lambda x: tok.batch_decode(x, skip_special_tokens=True))
    new_ms, new = timed(lambda x: decode_skipping_special(tok, x))
    result = {
        "what": "ms per output to turn token ids into text, median of repeats",
        "tokenizer": type(tok).__name__,
        "outputs": len(ids),
        "old_batch_decode_ms": round(old_ms, 4),
        "new_decode_skipping_special_ms": round(new_ms, 4),
        "ratio": round(old_ms / new_ms, 2),
        "same_text": old == new,
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
