"""Load a dataset's sft.jsonl with Hugging Face `datasets` (what TRL's SFTTrainer reads) and check
every row is a conversational example: a `messages` list of {role, content, ...} plus `tools`.
Prints {"rows": N, "columns": [...], "roles": [...], "tool_calls": N}.

Usage: python3 load_sft.py DATASET_DIR
"""
import json
import sys

from datasets import load_dataset

data = load_dataset("json", data_files=sys.argv[1].rstrip("/") + "/sft.jsonl", split="train")
roles, tool_calls = set(), 0
for row in data:
    for message in row["messages"]:
        roles.add(message["role"])
        for call in message.get("tool_calls") or []:
            json.loads(call["function"]["arguments"])
            tool_calls += 1
print(json.dumps({"rows": len(data), "columns": sorted(data.column_names), "roles": sorted(roles), "tool_calls": tool_calls}))
