"""Reference token ids for SmolLM2-135M-Instruct's tokenizer from the Python `tokenizers`
package, for the strings given as a JSON list on stdin.

The tokenizer is SmolLM2's published tokenizer.json pipeline (BPE; pre-tokenizer
Sequence[Digits(individual_digits), ByteLevel(add_prefix_space=False, use_regex=True)]; ByteLevel
decoder; its 17 special tokens), with the vocabulary, merges and special tokens read from the
GGUF file by llama.cpp's own `gguf` package. Prints {"ids": [[...], ...], "tokenizers": version}.

Usage: python3 smollm2_tokenizer.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf < strings.json
"""
import json
import sys

import tokenizers
from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers


def strings(reader, key):
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


reader = GGUFReader(sys.argv[1])
tokens = strings(reader, "tokenizer.ggml.tokens")
merges = [tuple(m.split(" ", 1)) for m in strings(reader, "tokenizer.ggml.merges")]
types_field = reader.fields["tokenizer.ggml.token_type"]
types = [int(types_field.parts[i][0]) for i in types_field.data]

tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
)
tokenizer.decoder = decoders.ByteLevel()
tokenizer.add_special_tokens([AddedToken(t, special=True) for t, kind in zip(tokens, types) if kind == 3])

texts = json.load(sys.stdin)
ids = [tokenizer.encode(text, add_special_tokens=False).ids for text in texts]
print(json.dumps({"ids": ids, "tokenizers": tokenizers.__version__}))
