"""SFT throughput of the `tiny` preset: Understudy (candle, CPU) against PyTorch `transformers`
LlamaForCausalLM with the same config, batch and sequence length, on this machine, in one run.

Usage: python3 bench/sft_speed.py [UNDERSTUDY_BINARY] [--dataset DATASET_DIR]
Needs `torch` and `transformers` (pip). Prints one JSON document with both figures and the ratio.

Random tokens by default (batch 4 x 512, every position trained). With --dataset, both sides train
on the first examples of a built dataset's training split (artifacts/datasets/<id>/train.tokens,
in file order) at batch 2, cut to 1024 tokens, right-padded, loss on the assistant tokens only:
the quickstart's shape. Understudy runs the opening its batch shares (system prompt and tool
schemas) once; PyTorch runs every row whole, as `transformers` does. Tokens/s counts every example
token on both sides.
"""
import json
import os
import subprocess
import sys
import time

args = sys.argv[1:]
dataset = None
if "--dataset" in args:
    at = args.index("--dataset")
    dataset = args[at + 1]
    del args[at:at + 2]
binary = args[0] if args else os.path.expanduser("~/.cache/understudy/target/release/understudy")
batch, seq, steps = (2, 1024, 8) if dataset else (4, 512, 8)
command = [binary, "bench", "sft", "--batch-size", str(batch), "--seq-len", str(seq), "--steps", str(steps)]
if dataset:
    command += ["--dataset-dir", dataset]
ours = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)

import struct  # noqa: E402

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


def read_examples(path):
    """Understudy's token cache: magic, u32 count, then per example u32 length, u32 ids, u8 mask."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"USTOK\x01\0\0", f"{path}: not an Understudy token cache"
    (count,), at, examples = struct.unpack_from("<I", data, 8), 12, []
    for _ in range(count):
        (n,) = struct.unpack_from("<I", data, at)
        ids = list(struct.unpack_from(f"<{n}I", data, at + 4))
        mask = list(data[at + 4 + 4 * n:at + 4 + 5 * n])
        examples.append((ids, mask))
        at += 4 + 5 * n
    return examples


def dataset_batches():
    examples = read_examples(os.path.join(dataset, "train.tokens"))
    for start in range(0, batch * (steps + 1), batch):
        rows = [(ids[:seq], mask[:seq]) for ids, mask in examples[start:start + batch]]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, mask) in enumerate(rows):
            input_ids[r, :len(ids)] = torch.tensor(ids)
            attention[r, :len(ids)] = 1
            labels[r, :len(ids)] = torch.tensor([i if m else -100 for i, m in zip(ids, mask)])
        yield input_ids, labels, attention, sum(len(ids) for ids, _ in rows)


c = ours["config"]
config = LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
                     num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
                     num_key_value_heads=c["num_key_value_heads"], rms_norm_eps=c["rms_norm_eps"], rope_theta=c["rope_theta"],
                     max_position_embeddings=c["max_position_embeddings"], tie_word_embeddings=c["tie_word_embeddings"])
torch.manual_seed(0)
model = LlamaForCausalLM(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
timings, counted = [], 0


def random_batches():
    for _ in range(steps + 1):
        ids = torch.randint(0, c["vocab_size"], (batch, seq + 1))
        yield ids[:, :-1], ids[:, :-1], None, batch * seq


for step, (input_ids, labels, attention, tokens) in enumerate(dataset_batches() if dataset else random_batches()):
    started = time.perf_counter()
    loss = model(input_ids=input_ids, labels=labels, attention_mask=attention).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    if step > 0:
        timings.append(time.perf_counter() - started)
        counted += tokens
torch_tps = counted / sum(timings)
print(json.dumps({
    "data": f"dataset {dataset}" if dataset else "random tokens",
    "batch_size": batch, "seq_len": seq,
    "understudy_tokens_per_second": round(ours["tokens_per_second"]),
    "understudy_peak_rss_mib": ours["peak_rss_mib"],
    "pytorch_tokens_per_second": round(torch_tps),
    "pytorch_threads": torch.get_num_threads(),
    "ratio_understudy_over_pytorch": round(ours["tokens_per_second"] / torch_tps, 3),
}, indent=2))
