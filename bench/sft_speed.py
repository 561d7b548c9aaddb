"""SFT throughput of the `tiny` preset: Understudy (candle, CPU) against PyTorch `transformers`
LlamaForCausalLM with the same config, batch and sequence length, on this machine, in one run.

Usage: python3 bench/sft_speed.py [UNDERSTUDY_BINARY]
Needs `torch` and `transformers` (pip). Prints one JSON document with both figures and the ratio.
"""
import json
import os
import subprocess
import sys
import time

binary = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/understudy/target/release/understudy")
batch, seq, steps = 4, 512, 8
ours = json.loads(subprocess.run([binary, "bench", "sft", "--batch-size", str(batch), "--seq-len", str(seq), "--steps", str(steps)],
                                 check=True, capture_output=True, text=True).stdout)

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

c = ours["config"]
config = LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
                     num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
                     num_key_value_heads=c["num_key_value_heads"], rms_norm_eps=c["rms_norm_eps"], rope_theta=c["rope_theta"],
                     max_position_embeddings=c["max_position_embeddings"], tie_word_embeddings=c["tie_word_embeddings"])
torch.manual_seed(0)
model = LlamaForCausalLM(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
timings = []
for step in range(steps + 1):
    ids = torch.randint(0, c["vocab_size"], (batch, seq + 1))
    started = time.perf_counter()
    loss = model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    if step > 0:
        timings.append(time.perf_counter() - started)
torch_tps = batch * seq / (sum(timings) / len(timings))
print(json.dumps({
    "batch_size": batch, "seq_len": seq,
    "understudy_tokens_per_second": round(ours["tokens_per_second"]),
    "understudy_peak_rss_mib": ours["peak_rss_mib"],
    "pytorch_tokens_per_second": round(torch_tps),
    "pytorch_threads": torch.get_num_threads(),
    "ratio_understudy_over_pytorch": round(ours["tokens_per_second"] / torch_tps, 3),
}, indent=2))
