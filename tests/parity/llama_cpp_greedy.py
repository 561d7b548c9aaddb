"""Greedy continuations and last-position logits from llama.cpp (PyPI `llama-cpp-python`) for
token-id prompts given on stdin as {"prompts": [[ids...], ...], "max_tokens": N, "stop": [ids]}.
Prints {"continuations": [[ids...], ...], "logits": [[...vocab floats of the prompt's last position...], ...]}.

Usage: python3 llama_cpp_greedy.py MODEL.gguf < request.json
"""
import json
import sys

import numpy as np
from llama_cpp import Llama

request = json.load(sys.stdin)
llm = Llama(model_path=sys.argv[1], n_ctx=1024, n_threads=2, n_batch=512, logits_all=True, verbose=False,
            type_k=0, type_v=0)  # f32 KV cache: the closest to an f32 reference
stop = set(request.get("stop", []))
continuations, logits = [], []
for prompt in request["prompts"]:
    llm.reset()
    llm.eval(prompt)
    last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
    logits.append(last.tolist())
    generated = []
    for _ in range(request["max_tokens"]):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token in stop:
            break
        generated.append(token)
        llm.eval([token])
    continuations.append(generated)
print(json.dumps({"continuations": continuations, "logits": logits}))
