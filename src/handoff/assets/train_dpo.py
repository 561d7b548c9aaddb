#!/usr/bin/env python3
"""Direct preference optimisation of the handoff's base model on Understudy's preference pairs
(data/dpo.jsonl: the imported Command Center pairs and pairs mined from rollouts, as TRL's
conversational prompt/chosen/rejected with the tools) with TRL's DPOTrainer, rendered with the
dataset's chat template. Sigmoid loss; the reference is the base (or, with LoRA, the base with
the adapters off).

    accelerate launch --config_file accelerate/<config>.yaml train_dpo.py [--max-steps N]

Then: understudy models import output/
"""
import json

from understudy_handoff import (arguments, base_model, dtype_and_device, finish, load_handoff, load_tokenizer,
                                lora_config, read_jsonl, trainer_settings)


def rows(name):
    # Tools travel as a JSON string: TRL parses it per row, and Arrow needs no common schema.
    out = []
    for row in read_jsonl(name):
        if "tools" in row:
            row["tools"] = json.dumps(row["tools"])
        out.append(row)
    return out


def main():
    handoff = load_handoff()
    hp = handoff["hyperparameters"]
    args = arguments(__doc__)

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    base = base_model(handoff, args.base)
    tokenizer = load_tokenizer(handoff, base)
    dtype, device = dtype_and_device()
    train = rows("data/dpo.jsonl")
    if not train:
        raise SystemExit("data/dpo.jsonl holds no pairs: import preference pairs and rebuild the dataset")
    val = rows("data/dpo_val.jsonl")
    config = DPOConfig(
        **trainer_settings(handoff, args, dtype, device),
        beta=hp["beta"],
        max_length=hp["max_length"],
        lr_scheduler_type="cosine",
        warmup_steps=hp["warmup_ratio"],  # a float below 1 is a ratio of the steps
        eval_strategy="no",
    )
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(val) if val else None,
        processing_class=tokenizer,
        peft_config=lora_config(handoff),
    )
    trainer.train()
    finish(trainer, tokenizer, handoff, args.output_dir, base)


if __name__ == "__main__":
    main()
