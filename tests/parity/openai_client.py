"""The official OpenAI Python client (PyPI `openai`) against a running Understudy server that
serves a tiny model trained on tests/data/overfit_tools.jsonl. Usage:
    python3 openai_client.py BASE_URL TOOLS.json
Prints one JSON document with what each call returned; the Rust test asserts on it."""
import json
import sys

import openai
from openai import OpenAI

base, tools_path = sys.argv[1], sys.argv[2]
tools = json.load(open(tools_path))
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
system = {"role": "system", "content": "You are a coding agent. Use the tools."}
user = {"role": "user", "content": "Where is the login code?"}
out = {}

models = client.models.list()
out["models"] = [m.id for m in models.data]
model = models.data[0].id

# Non-streamed tools request.
first = client.chat.completions.create(model=model, messages=[system, user], tools=tools, seed=7, max_tokens=60)
choice = first.choices[0]
out["non_stream"] = {
    "finish_reason": choice.finish_reason,
    "content": choice.message.content,
    "tool_calls": [{"id": t.id, "type": t.type, "name": t.function.name, "arguments": json.loads(t.function.arguments)} for t in choice.message.tool_calls or []],
    "usage": first.usage.model_dump(),
    "system_fingerprint": first.system_fingerprint,
    "model": first.model,
}

# The same request streamed: reassemble by index, count roles/ids/names/finish reasons.
stream = client.chat.completions.create(model=model, messages=[system, user], tools=tools, seed=7, max_tokens=60, stream=True,
                                        stream_options={"include_usage": True})
roles, finishes, ids, names, calls, content, usage_chunks, chunk_ids = [], [], [], [], {}, "", 0, set()
for chunk in stream:
    chunk_ids.add(chunk.id)
    if not chunk.choices:
        usage_chunks += 1
        out["stream_usage"] = chunk.usage.model_dump()
        continue
    delta = chunk.choices[0].delta
    if delta.role:
        roles.append(delta.role)
    if delta.content:
        content += delta.content
    for call in delta.tool_calls or []:
        entry = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
        if call.id:
            ids.append(call.id)
            entry["id"] = call.id
        if call.function and call.function.name:
            names.append(call.function.name)
            entry["name"] = call.function.name
        if call.function and call.function.arguments:
            entry["arguments"] += call.function.arguments
    if chunk.choices[0].finish_reason:
        finishes.append(chunk.choices[0].finish_reason)
out["stream"] = {
    "roles": roles, "finishes": finishes, "ids": len(ids), "names": names, "content": content or None,
    "tool_calls": [{"name": c["name"], "arguments": json.loads(c["arguments"])} for _, c in sorted(calls.items())],
    "usage_chunks": usage_chunks, "distinct_chunk_ids": len(chunk_ids),
}

# The SDK's strict stream accumulator.
with client.chat.completions.stream(model=model, messages=[system, user], tools=tools, seed=7, max_tokens=60) as helper:
    final = helper.get_final_completion()
out["stream_helper"] = [t.function.name for t in final.choices[0].message.tool_calls or []]

# The follow-up turn carrying the tool result.
call = choice.message.tool_calls[0] if choice.message.tool_calls else None
if call is not None:
    follow = client.chat.completions.create(model=model, tools=tools, max_tokens=40, messages=[
        system, user,
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "src/auth.py:3:def login(user):"},
    ])
    out["follow_up"] = {"finish_reason": follow.choices[0].finish_reason, "content": follow.choices[0].message.content,
                        "tool_calls": len(follow.choices[0].message.tool_calls or [])}

# tool_choice: a named function is forced; required forces some call.
named = client.chat.completions.create(model=model, messages=[system, {"role": "user", "content": "Show me the README."}], tools=tools,
                                       tool_choice={"type": "function", "function": {"name": "Read"}}, max_tokens=40)
out["named"] = [(t.function.name, json.loads(t.function.arguments)) for t in named.choices[0].message.tool_calls or []]

# Forced calls keep OpenAI's promise whatever the prompt, seed or temperature: exactly one call,
# of the named tool (or of an offered one for "required"), whose arguments validate against the
# tool's schema. The tiny model alone rambles here; the schema grammar holds it.
import jsonschema
schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
forced = {"requests": 0, "valid": 0, "finishes": [], "failures": []}
prompts = ["Show me the README.", "Run the test suite.", "Where is login defined?", "How many lines has main.rs?", "hello"]
for i, prompt in enumerate(prompts):
    for choice in [{"type": "function", "function": {"name": n}} for n in schemas] + ["required"]:
        answer = client.chat.completions.create(model=model, messages=[system, {"role": "user", "content": prompt}], tools=tools,
                                                tool_choice=choice, temperature=1.0 if i % 2 else 0.0, seed=i, max_tokens=80)
        calls = answer.choices[0].message.tool_calls or []
        ok = len(calls) == 1 and (choice == "required" or calls[0].function.name == choice["function"]["name"])
        if ok:
            try:
                jsonschema.validate(json.loads(calls[0].function.arguments), schemas[calls[0].function.name])
            except Exception as error:
                ok = False
        forced["requests"] += 1
        forced["valid"] += int(ok)
        forced["finishes"].append(answer.choices[0].finish_reason)
        if not ok:
            forced["failures"].append({"prompt": prompt, "choice": choice, "reply": answer.choices[0].message.model_dump()})
out["forced"] = forced
# tool_choice auto: the model decides whether to call, and each call it opens is decoded in the
# tools' grammar, so no reply carries a malformed or schema-breaking call.
auto = {"requests": 0, "calls": 0, "valid": 0, "malformed": 0}
for i, prompt in enumerate(prompts):
    for temperature in (0.0, 1.0):
        answer = client.chat.completions.create(model=model, messages=[system, {"role": "user", "content": prompt}], tools=tools,
                                                temperature=temperature, seed=i, max_tokens=80)
        message = answer.choices[0].message
        auto["requests"] += 1
        broken = "<tool_call>" in (message.content or "") or "</tool_call>" in (message.content or "")
        auto["malformed"] += int(broken)
        if broken:
            auto.setdefault("broken", []).append({"finish": answer.choices[0].finish_reason, "content": message.content})
        for call in message.tool_calls or []:
            auto["calls"] += 1
            try:
                jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
                auto["valid"] += 1
            except Exception:
                pass
out["auto"] = auto
# response_format json_schema: the content is JSON matching the schema.
schema = {"type": "object", "properties": {"file": {"type": "string"}, "lines": {"type": "integer"}, "kind": {"enum": ["source", "test"]}},
          "required": ["file", "lines", "kind"], "additionalProperties": False}
structured = client.chat.completions.create(model=model, messages=[system, user], max_tokens=80, seed=3, temperature=0.7,
                                            response_format={"type": "json_schema", "json_schema": {"name": "where", "schema": schema}})
content = structured.choices[0].message.content
try:
    jsonschema.validate(json.loads(content), schema)
    out["json_schema"] = {"valid": True, "content": content}
except Exception as error:
    out["json_schema"] = {"valid": False, "content": content, "error": str(error)}
none = client.chat.completions.create(model=model, messages=[system, user], tools=tools, tool_choice="none", max_tokens=20)
out["none"] = {"tool_calls": len(none.choices[0].message.tool_calls or []), "finish_reason": none.choices[0].finish_reason}

# Legacy completions.
completion = client.completions.create(model=model, prompt="<|im_start|>system\nYou are a coding agent. Use the tools.<|im_end|>\n", max_tokens=5)
out["completion"] = {"object": completion.object, "finish_reason": completion.choices[0].finish_reason, "tokens": completion.usage.completion_tokens}

# Error shapes.
errors = {}
try:
    client.chat.completions.create(model="no-such-model", messages=[user])
except openai.NotFoundError as e:
    errors["unknown_model"] = {"status": e.status_code, "code": e.code, "type": e.type, "param": e.param}
try:
    client.chat.completions.create(model=model, messages=[{"role": "wizard", "content": "hi"}])
except openai.BadRequestError as e:
    errors["bad_role"] = {"status": e.status_code, "message": e.message, "param": e.param}
try:
    client.chat.completions.create(model=model, messages=[user], n=2)
except openai.BadRequestError as e:
    errors["n"] = {"status": e.status_code, "param": e.param}
try:
    client.chat.completions.create(model=model, messages=[user], temperature=5)
except openai.BadRequestError as e:
    errors["temperature"] = {"status": e.status_code, "param": e.param}
out["errors"] = errors
# Unknown fields are ignored.
extra = client.chat.completions.create(model=model, messages=[system, user], max_completion_tokens=5, extra_body={"store": True, "metadata": {"a": "b"}, "not_a_field": 1})
out["extra_fields"] = extra.choices[0].finish_reason
print(json.dumps(out))
