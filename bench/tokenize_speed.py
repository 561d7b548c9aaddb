"""Tokenization throughput: Understudy's Rust tokenizer against the Python `tokenizers` package,
same tokenizer.json, same texts (a dataset's rendered training traces), on this machine.

Usage: python3 bench/tokenize_speed.py DATASET_DIR [UNDERSTUDY_BINARY]
Prints one JSON document with both figures.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import tokenizers

dataset = sys.argv[1]
binary = sys.argv[2] if len(sys.argv) > 2 else os.path.expanduser("~/.cache/understudy/target/release/understudy")
repeats = 3
with tempfile.TemporaryDirectory() as scratch:
    corpus_path = os.path.join(scratch, "corpus.json")
    rust = json.loads(
        subprocess.run(
            [binary, "bench", "tokenize", "--dataset-dir", dataset, "--dump-corpus", corpus_path, "--repeats", str(repeats)],
            check=True, capture_output=True, text=True,
        ).stdout
    )
    texts = json.load(open(corpus_path))

tokenizer = tokenizers.Tokenizer.from_file(os.path.join(dataset, "tokenizer.json"))
started = time.perf_counter()
for _ in range(repeats):
    tokens = sum(len(tokenizer.encode(text, add_special_tokens=False).ids) for text in texts)
sequential = (time.perf_counter() - started) / repeats
started = time.perf_counter()
for _ in range(repeats):
    tokenizer.encode_batch(texts, add_special_tokens=False)
batch = (time.perf_counter() - started) / repeats

print(json.dumps({
    "texts": len(texts),
    "tokens": tokens,
    "same_token_count": tokens == rust["tokens"],
    "understudy_rust": {
        "sequential_tokens_per_second": round(rust["sequential_tokens_per_second"]),
        "batch_tokens_per_second": round(rust["batch_tokens_per_second"]),
    },
    "python_tokenizers": {
        "version": tokenizers.__version__,
        "sequential_tokens_per_second": round(tokens / sequential),
        "batch_tokens_per_second": round(tokens / batch),
    },
}, indent=2))
