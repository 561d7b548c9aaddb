#!/usr/bin/env python3
"""Supervised fine-tuning of the handoff's base model on Understudy's dataset with TRL's
SFTTrainer. By default it trains on data/sft_tokens.jsonl: the token ids and assistant-only loss
masks Understudy built with the dataset's chat template, so every GPU trains on exactly the
tokens `understudy train` would. `--data messages` lets TRL render data/sft.jsonl itself with the
same template (assistant-only loss through TRL's generation markers).

    accelerate launch --config_file accelerate/<config>.yaml train_sft.py [--max-steps N]

Then: understudy models import output/
"""
import argparse

from understudy_handoff import (base_model, dtype_and_device, finish, load_handoff, load_tokenizer, lora_config,
                                path, read_jsonl)


def main():
    handoff = load_handoff()
    hp = handoff["hyperparameters"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="start from this model instead of the handoff's base")
    parser.add_argument("--output-dir", default=path("output"))
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps (-1: all epochs)")
    parser.add_argument("--data", choices=["tokens", "messages"], default="tokens")
    args = parser.parse_args()

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    base = base_model(handoff, args.base)
    tokenizer = load_tokenizer(handoff, base)
    dtype, device = dtype_and_device()
    if args.data == "tokens":
        train = read_jsonl("data/sft_tokens.jsonl")
        val = read_jsonl("data/sft_val_tokens.jsonl")
    else:
        train = read_jsonl("data/sft.jsonl")
        val = read_jsonl("data/sft_val.jsonl")
    config = SFTConfig(
        output_dir=args.output_dir,
        max_length=hp["max_length"],
        assistant_only_loss=args.data == "messages",
        learning_rate=hp["learning_rate"],
        num_train_epochs=hp["epochs"],
        max_steps=args.max_steps,
        per_device_train_batch_size=hp["per_device_batch_size"],
        gradient_accumulation_steps=hp["gradient_accumulation_steps"],
        lr_scheduler_type="cosine",
        warmup_steps=hp["warmup_ratio"],  # a float below 1 is a ratio of the steps
        weight_decay=hp["weight_decay"],
        max_grad_norm=hp["max_grad_norm"],
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        bf16=device == "cuda" and dtype.is_floating_point and str(dtype) == "torch.bfloat16",
        seed=hp["seed"],
        report_to="none",
        use_cpu=device == "cpu",
    )
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(val) if val else None,
        processing_class=tokenizer,
        peft_config=lora_config(handoff),
    )
    # The loss on the validation split before and after, on the same tokens: did it learn?
    before = trainer.evaluate()["eval_loss"] if val else None
    trainer.train()
    after = trainer.evaluate()["eval_loss"] if val else None
    finish(trainer, tokenizer, handoff, args.output_dir, base, {"eval_loss_before": before, "eval_loss_after": after})


if __name__ == "__main__":
    main()
