"""Greedy replies from llama.cpp (PyPI `llama-cpp-python`) on rendered prompt texts, tokenized by
llama.cpp itself from the GGUF's tokenizer metadata. Reads {"prompts": [text, ...], "max_tokens": N}
on stdin; prints {"prompt_ids": [[...]], "continuations": [[...]], "stopped": [bool],
"eog": [ids that end generation among the first 512]} where `stopped` says generation ended at an
end-of-generation token (not the length limit).

Usage: python3 llama_cpp_chat.py MODEL.gguf < request.json
"""
import json
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

request = json.load(sys.stdin)
llm = Llama(model_path=sys.argv[1], n_ctx=2048, n_threads=2, n_batch=512, logits_all=True, verbose=False,
            type_k=0, type_v=0)
vocab = llm._model.vocab
prompt_ids, continuations, stopped = [], [], []
for text in request["prompts"]:
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    prompt_ids.append(ids)
    llm.reset()
    llm.eval(ids)
    generated, ended = [], False
    for _ in range(request["max_tokens"]):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            ended = True
            break
        generated.append(token)
        llm.eval([token])
    continuations.append(generated)
    stopped.append(ended)
eog = [i for i in range(min(512, llm.n_vocab())) if llama_cpp.llama_vocab_is_eog(vocab, i)]
print(json.dumps({"prompt_ids": prompt_ids, "continuations": continuations, "stopped": stopped, "eog": eog}))
