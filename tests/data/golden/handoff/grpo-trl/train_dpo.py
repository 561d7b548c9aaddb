#!/usr/bin/env python3
"""Direct preference optimisation of the handoff's base model on Understudy's preference pairs
(data/dpo.jsonl: the imported Command Center pairs and pairs mined from rollouts, as TRL's
conversational prompt/chosen/rejected with the tools) with TRL's DPOTrainer, rendered with the
dataset's chat template. Sigmoid loss; the reference is the base (or, with LoRA, the base with
the adapters off).

    accelerate launch --config_file accelerate/<config>.yaml train_dpo.py [--max-steps N]

Then: understudy models import output/
"""
import argparse
import json

from understudy_handoff import (base_model, dtype_and_device, finish, load_handoff, load_tokenizer, lora_config,
                                path, read_jsonl)


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="start from this model instead of the handoff's base")
    parser.add_argument("--output-dir", default=path("output"))
    parser.add_argument("--max-steps", type=int, default=-1)
    args = parser.parse_args()

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
        output_dir=args.output_dir,
        beta=hp["beta"],
        max_length=hp["max_length"],
        learning_rate=hp["learning_rate"],
        num_train_epochs=hp["epochs"],
        max_steps=args.max_steps,
        per_device_train_batch_size=hp["per_device_batch_size"],
        gradient_accumulation_steps=hp["gradient_accumulation_steps"],
        lr_scheduler_type="cosine",
        warmup_steps=hp["warmup_ratio"],  # a float below 1 is a ratio of the steps
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        bf16=device == "cuda" and str(dtype) == "torch.bfloat16",
        seed=hp["seed"],
        report_to="none",
        use_cpu=device == "cpu",
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
