"""What the PyPI `gguf` reader sees in a GGUF file: every key with its value type (arrays give
their element type and length; scalars and strings their value) and every tensor's name, GGML
type and shape in ggml `ne` order. Usage: python3 gguf_inspect.py FILE.gguf"""
import json
import sys

from gguf import GGUFReader, GGUFValueType

reader = GGUFReader(sys.argv[1])
fields = {}
for name, field in reader.fields.items():
    if name.startswith("GGUF."):
        continue
    kind = field.types[0]
    entry = {"type": kind.name}
    if kind == GGUFValueType.ARRAY:
        entry["element"] = field.types[1].name
        entry["length"] = len(field.data)
        if field.types[1] == GGUFValueType.STRING:
            entry["first"] = [bytes(field.parts[i]).decode("utf-8") for i in field.data[:4]]
    elif kind == GGUFValueType.STRING:
        entry["value"] = bytes(field.parts[field.data[0]]).decode("utf-8")
    else:
        entry["value"] = field.parts[field.data[0]].tolist()[0]
    fields[name] = entry
tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in t.shape]} for t in reader.tensors]
print(json.dumps({"fields": fields, "tensors": tensors}))
