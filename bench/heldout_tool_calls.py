"""Held-out check of a served model: for N traces of the store's test split, send the trace's
system prompt and user prompt with its tools through the OpenAI-compatible endpoint (official
client, greedy) and count replies with valid tool calls (known tool name, arguments a JSON object
with the schema's required keys) and whose first tool is the trace's first tool.

    python3 bench/heldout_tool_calls.py --base http://127.0.0.1:8080 --db DATA_DIR/understudy.db [--n 12]
"""
import argparse
import json
import sqlite3

from openai import OpenAI

parser = argparse.ArgumentParser()
parser.add_argument("--base", required=True)
parser.add_argument("--db", required=True)
parser.add_argument("--n", type=int, default=12)
parser.add_argument("--model", default="understudy")
args = parser.parse_args()
client = OpenAI(base_url=args.base + "/v1", api_key="check", max_retries=0)
rows = sqlite3.connect(args.db).execute("SELECT body FROM traces WHERE split = 'test' ORDER BY id LIMIT ?", (args.n,)).fetchall()
valid = right_tool = 0
details = []
for (body,) in rows:
    trace = json.loads(body)
    prompt = [m for m in trace["messages"] if m["role"] in ("system", "user")][:2]
    reference = next(m["tool_calls"][0]["function"]["name"] for m in trace["messages"] if m["role"] == "assistant" and m.get("tool_calls"))
    schemas = {t["function"]["name"]: t["function"].get("parameters", {}) for t in trace["tools"]}
    reply = client.chat.completions.create(model=args.model, messages=prompt, tools=trace["tools"], temperature=0, max_tokens=128)
    calls = reply.choices[0].message.tool_calls or []
    ok = bool(calls)
    for call in calls:
        try:
            arguments = json.loads(call.function.arguments)
        except ValueError:
            ok = False
            continue
        schema = schemas.get(call.function.name)
        if schema is None or not isinstance(arguments, dict) or any(key not in arguments for key in schema.get("required", [])):
            ok = False
    valid += ok
    right_tool += bool(calls) and calls[0].function.name == reference
    details.append({"prompt": trace["prompt"][:70], "reference_first_tool": reference,
                    "calls": [(c.function.name, c.function.arguments) for c in calls], "valid": ok})
print(json.dumps({"prompts": len(rows), "valid_tool_calls": valid, "right_first_tool": right_tool, "details": details}, indent=1))
