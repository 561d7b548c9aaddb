"""Render chat templates with Python's Jinja2 in the environment Hugging Face's
`apply_chat_template` uses (sandboxed, trim_blocks, lstrip_blocks, `tojson` as json.dumps with
non-ASCII kept, `raise_exception`): how transformers (and servers built on it) render a
checkpoint's template. Reads {"renders": [{"template": source, "context": {...}}]}
on stdin; prints {"texts": [...]}.

Usage: python3 jinja_render.py < request.json
"""
import json
import sys

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise TemplateError(message)


def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
environment.filters["tojson"] = tojson
environment.globals["raise_exception"] = raise_exception
request = json.load(sys.stdin)
texts = [environment.from_string(r["template"]).render(**r["context"]) for r in request["renders"]]
print(json.dumps({"texts": texts}))
