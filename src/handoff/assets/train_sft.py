#!/usr/bin/env python3
"""Supervised fine-tuning of the handoff's base model on Understudy's dataset with TRL's
SFTTrainer. By default it trains on data/sft_tokens.jsonl: the token ids and assistant-only loss
masks Understudy built with the dataset's chat template, so every GPU trains on exactly the
tokens `understudy train` would. `--data messages` lets TRL render data/sft.jsonl itself with the
same template (assistant-only loss through TRL's generation markers).

    accelerate launch --config_file accelerate/<config>.yaml train_sft.py [--max-steps N]

Then: understudy models import output/
"""
from understudy_handoff import (arguments, base_model, dtype_and_device, finish, load_handoff, load_tokenizer,
                                lora_config, read_jsonl, trainer_settings)


def main():
    handoff = load_handoff()
    hp = handoff["hyperparameters"]
    args = arguments(__doc__, lambda p: p.add_argument("--data", choices=["tokens", "messages"], default="tokens"))

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
        **trainer_settings(handoff, args, dtype, device),
        max_length=hp["max_length"],
        assistant_only_loss=args.data == "messages",
        lr_scheduler_type="cosine",
        warmup_steps=hp["warmup_ratio"],  # a float below 1 is a ratio of the steps
        weight_decay=hp["weight_decay"],
        max_grad_norm=hp["max_grad_norm"],
        eval_strategy="no",
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
