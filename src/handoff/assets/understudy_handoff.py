"""Shared by the handoff's training scripts: the handoff's settings, the base model's tokenizer
checked against the dataset's (the token ids in data/ must mean the same text), the dataset's
chat template, and the files `understudy models import` reads from the output directory."""
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def load_handoff():
    with open(os.path.join(HERE, "handoff.json"), encoding="utf-8") as f:
        return json.load(f)


def path(name):
    return os.path.join(HERE, name)


def base_model(handoff, override=None):
    """The model to start from: --base, else the handoff's base (relative paths are relative to
    the handoff directory)."""
    base = override or handoff["base"]["model"]
    if not os.path.isabs(base) and os.path.exists(os.path.join(HERE, base)):
        base = os.path.join(HERE, base)
    return base


def load_tokenizer(handoff, base):
    """The base's tokenizer, refused when its vocabulary differs from the dataset's, with the
    dataset's chat template and end-of-turn token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    with open(path("tokenizer.json"), encoding="utf-8") as f:
        ours = json.load(f)
    vocab = dict(ours["model"]["vocab"])
    for token in ours.get("added_tokens", []):
        vocab[token["content"]] = token["id"]
    theirs = tokenizer.get_vocab()
    differing = [t for t, i in vocab.items() if theirs.get(t) != i]
    if differing or len(theirs) != len(vocab):
        sys.exit(
            f"{base}: its tokenizer does not match the dataset's tokenizer.json "
            f"({len(theirs)} tokens against {len(vocab)}, {len(differing)} differ, e.g. {differing[:3]}): "
            "the dataset's token ids would mean other text. Use the base the dataset was built for."
        )
    with open(path("chat_template.jinja"), encoding="utf-8") as f:
        tokenizer.chat_template = f.read()
    template = handoff["dataset"]["template"]
    if template.get("end_of_turn"):
        tokenizer.eos_token = template["end_of_turn"][0]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def dtype_and_device():
    import torch

    if torch.cuda.is_available():
        return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16), "cuda"
    return torch.float32, "cpu"


def lora_config(handoff):
    lora = handoff["hyperparameters"].get("lora")
    if not lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=lora["targets"], task_type="CAUSAL_LM")


def arguments(doc, extra=None):
    """The flags every script takes (and any `extra(parser)` adds)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="start from this model instead of the handoff's base")
    parser.add_argument("--output-dir", default=path("output"))
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps (-1: all epochs)")
    if extra:
        extra(parser)
    return parser.parse_args()


def trainer_settings(handoff, args, dtype, device):
    """The TrainingArguments all three trainers share, from handoff.json and the flags."""
    hp = handoff["hyperparameters"]
    return dict(
        output_dir=args.output_dir,
        learning_rate=hp["learning_rate"],
        num_train_epochs=hp["epochs"],
        max_steps=args.max_steps,
        per_device_train_batch_size=hp["per_device_batch_size"],
        gradient_accumulation_steps=hp["gradient_accumulation_steps"],
        logging_steps=1,
        save_strategy="no",
        bf16=device == "cuda" and str(dtype) == "torch.bfloat16",
        seed=hp["seed"],
        report_to="none",
        use_cpu=device == "cpu",
    )


def read_jsonl(name):
    rows = []
    with open(path(name), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def finish(trainer, tokenizer, handoff, output_dir, base, extra=None):
    """Save what `understudy models import OUTPUT_DIR` reads: the weights (or the PEFT adapter),
    the tokenizer, the dataset's template files and the lineage with the loss curve."""
    trainer.save_model(output_dir)
    if not trainer.is_world_process_zero():
        return
    tokenizer.save_pretrained(output_dir)
    for name in ("chat_template.jinja", "template.json"):
        shutil.copyfile(path(name), os.path.join(output_dir, name))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    lineage = {
        "handoff": handoff["id"],
        "dataset": handoff["dataset"]["id"],
        "phase": handoff["phase"],
        "engine": handoff["engine"],
        "base": base,
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "losses": losses,
        **(extra or {}),
    }
    with open(os.path.join(output_dir, "understudy_handoff.json"), "w", encoding="utf-8") as f:
        json.dump(lineage, f, indent=2)
    print(json.dumps({k: v for k, v in lineage.items() if k != "losses"}))
