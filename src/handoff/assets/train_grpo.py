#!/usr/bin/env python3
"""GRPO of the handoff's base model with TRL's GRPOTrainer and Understudy's reward: every
completion is scored by a running `understudy serve` (POST /api/rewards/score), which replays
its tool calls in the case's sandbox and returns the same components and total as Understudy's
own GRPO. Start the server first (`understudy serve`, or with --host and --api-key on a cluster).

Single-turn (default): the prompt is rendered by Understudy with the dataset's chat template and
tools (data/grpo_prompts.jsonl), the model's first reply is the completion. `--multi-turn`: TRL
runs the tool loop itself with `UnderstudyEnvironment`, whose tools execute on the server, and the
whole episode is scored (needs transformers >= 5.2). `--vllm` generates with vLLM (colocated).

    accelerate launch --config_file accelerate/<config>.yaml train_grpo.py [--max-steps N]

Then: understudy models import output/
"""
from understudy_handoff import (arguments, base_model, dtype_and_device, finish, load_handoff, load_tokenizer,
                                lora_config, read_jsonl, trainer_settings)


def extra_flags(parser):
    parser.add_argument("--multi-turn", action="store_true", help="TRL runs the tools on the Understudy server")
    parser.add_argument("--vllm", action="store_true", help="generate with vLLM (colocate mode)")


def main():
    handoff = load_handoff()
    hp = handoff["hyperparameters"]
    args = arguments(__doc__, extra_flags)

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from understudy_rewards import UnderstudyEnvironment, understudy_reward, use_tokenizer

    base = base_model(handoff, args.base)
    tokenizer = load_tokenizer(handoff, base)
    tokenizer.padding_side = "left"
    use_tokenizer(tokenizer)
    dtype, device = dtype_and_device()
    rows = read_jsonl("data/grpo_prompts.jsonl")
    if not rows:
        raise SystemExit("data/grpo_prompts.jsonl holds no cases: the dataset's training split has no replayable task")
    prompt = "messages" if args.multi_turn else "prompt"
    rows = [{"prompt": row[prompt], "case": row["case"]} for row in rows]
    config = GRPOConfig(
        **trainer_settings(handoff, args, dtype, device),
        num_generations=hp["num_generations"],
        max_completion_length=hp["max_completion_length"],
        temperature=hp["temperature"],
        epsilon=hp["epsilon"],
        epsilon_high=hp["epsilon_high"],
        beta=hp["beta"],
        scale_rewards=hp["scale_rewards"],
        loss_type="dapo",
        use_vllm=args.vllm,
        vllm_mode="colocate",
    )
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[understudy_reward],
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(handoff),
        environment_factory=UnderstudyEnvironment if args.multi_turn else None,
    )
    trainer.train()
    finish(trainer, tokenizer, handoff, args.output_dir, base)


if __name__ == "__main__":
    main()
