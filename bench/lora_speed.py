"""LoRA step time on SmolLM2-135M: Understudy (candle, CPU) against PyTorch `transformers` + `peft`
with the same shapes in the same run: rank 8, alpha 16, adapters on q/k/v/o, AdamW at 1e-3, the
base frozen, random token batches, the first step not counted.

Usage: python3 bench/lora_speed.py SMOLLM2.gguf [UNDERSTUDY_BINARY] [--batch-size 2] [--seq-len 256] [--steps 3]
Needs torch, transformers, peft and gguf (transformers reads the GGUF through it). Prints one JSON
document with both figures and the ratio.
"""
import argparse
import json
import os
import subprocess
import time

parser = argparse.ArgumentParser()
parser.add_argument("gguf")
parser.add_argument("binary", nargs="?", default=os.path.expanduser("~/.cache/understudy/target/release/understudy"))
parser.add_argument("--batch-size", type=int, default=2)
parser.add_argument("--seq-len", type=int, default=256)
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()
batch, seq, steps = args.batch_size, args.seq_len, args.steps

ours = json.loads(subprocess.run(
    [args.binary, "bench", "lora", "--model", args.gguf, "--batch-size", str(batch), "--seq-len", str(seq),
     "--steps", str(steps)], check=True, capture_output=True, text=True).stdout)

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(args.gguf)),
                                             gguf_file=os.path.basename(args.gguf), dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
trainable = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01)
vocab = model.config.vocab_size
torch.manual_seed(0)
timings = []
for step in range(steps + 1):
    ids = torch.randint(0, vocab, (batch, seq + 1))
    started = time.perf_counter()
    loss = model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    optimizer.zero_grad()
    if step > 0:
        timings.append(time.perf_counter() - started)
torch_seconds = sum(timings) / len(timings)
print(json.dumps({
    "model": os.path.basename(args.gguf), "batch_size": batch, "seq_len": seq, "rank": 8, "targets": "q,k,v,o",
    "understudy_seconds_per_step": round(ours["seconds_per_step"], 3),
    "understudy_peak_rss_mib": ours["peak_rss_mib"],
    "peft_seconds_per_step": round(torch_seconds, 3),
    "pytorch_threads": torch.get_num_threads(),
    "ratio_understudy_speed_over_peft": round(torch_seconds / ours["seconds_per_step"], 3),
}, indent=2))
