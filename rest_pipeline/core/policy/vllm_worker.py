"""The vLLM engine process: run by `.venv-vllm`'s Python (its own environment), never imported by the project.

vLLM cannot share the project's environment (every release for torch 2.13 needs transformers >= 5,
unbabel-comet pins < 5), so the project starts this file as a child process with that environment's
interpreter. It imports the standard library and vLLM only. Protocol, one JSON object per line:

- argv[1]: {"model", "dtype", "seed", "max_model_len"}; the worker loads the model, then writes
  {"ready": true, "vllm": <version>} (or {"ready": false, "error": ...}).
- stdin: {"prompts": [[token ids]], "n", "temperature", "top_k", "top_p", "max_tokens", "stop_token_ids",
  "seed"} -> stdout: {"ok": true, "outputs": [[[completion ids] x n] per prompt]} or {"ok": false, "error": ...}.

Seeding: the engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so seeding torch's
generators before a request makes its samples a function of (prompts, settings, seed). vLLM's
per-request seeds are not used: on CPU its bookkeeping rewinds a seeded request's generator when a
prefill is chunked, which a CPU generator cannot do ("CPU Generator does not use offset").

Token ids in, token ids out: the project's tokenizer and prompt format (family.py) stay the one source
of truth, and vLLM never loads a tokenizer. vLLM's own output goes to stderr (the log file the parent
names in its errors). The worker exits at end of input, and within half a second when its parent dies
(SIGKILL included): it polls its parent pid, so no engine outlives the run.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(3)


def main() -> int:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)  # our channel; fd 1 becomes stderr for vLLM's prints
    os.dup2(2, 1)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    config = json.loads(sys.argv[1])
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: no engine core to orphan
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on CPU
    try:
        import torch
        import vllm
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        llm = LLM(
            model=config["model"],
            skip_tokenizer_init=True,
            dtype=config["dtype"],
            seed=config["seed"],
            max_model_len=config["max_model_len"],
            enforce_eager=config.get("enforce_eager", True),
        )
    except Exception as e:  # reported on the protocol channel; the traceback is in the log
        import traceback

        traceback.print_exc()
        protocol.write(json.dumps({"ready": False, "error": f"{type(e).__name__}: {e}"}) + "\n")
        return 1
    protocol.write(json.dumps({"ready": True, "vllm": vllm.__version__}) + "\n")
    for line in sys.stdin:
        try:
            req = json.loads(line)
            params = SamplingParams(
                n=req["n"],
                temperature=req["temperature"],
                top_k=req["top_k"] or 0,
                top_p=req["top_p"] or 1.0,
                max_tokens=req["max_tokens"],
                stop_token_ids=req["stop_token_ids"],
                detokenize=False,
            )
            prompts = [TokensPrompt(prompt_token_ids=ids) for ids in req["prompts"]]
            random.seed(req["seed"])
            torch.manual_seed(req["seed"])
            results = llm.generate(prompts, params, use_tqdm=False)
            outputs = [[list(o.token_ids) for o in sorted(r.outputs, key=lambda o: o.index)] for r in results]
            reply = {"ok": True, "outputs": outputs}
        except Exception as e:
            import traceback

            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        protocol.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
