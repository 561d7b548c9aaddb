"""Every performance figure of spec section 5 in one run, as one JSON document: bootstrap, capture,
tokenization against the Python `tokenizers` package, SFT of the tiny preset against PyTorch
`transformers`, a LoRA step on SmolLM2-135M against PyTorch + PEFT, export, serving against llama.cpp on the same GGUF,
and eval cases per second. Each reference side is measured in the same run when its Python package
is importable (by --python, or --torch-python for PyTorch) and marked missing otherwise. With
--markdown, also prints README's performance table regenerated from the document.

    python3 bench/all.py [--binary B] [--python P] [--torch-python P] [--smollm2 GGUF] [--out F] [--markdown]
    ./run.sh bench       (the same, with the built binary)
"""
import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(command, env=None, timeout=1800):
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... exited {result.returncode}: {result.stderr.strip()[-600:]}")
    value = json.loads(result.stdout)
    if isinstance(value, dict):
        value.setdefault("wall_seconds", round(time.perf_counter() - started, 3))
    return value


def has_modules(python, *modules):
    code = "import " + ", ".join(modules)
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def machine():
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as f:
            memory = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory, "os": platform.platform(),
            "date": datetime.date.today().isoformat()}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def section(name, figures, work):
    """Run one section; a failure is recorded, never fatal."""
    print(f"bench all: {name}...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        figures[name] = work()
    except Exception as error:  # noqa: BLE001 — one failing section must not hide the others
        figures[name] = {"error": str(error)}
    print(f"bench all: {name} done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.expanduser("~/.cache/understudy/target/release/understudy"))
    parser.add_argument("--python", default=sys.executable, help="Python with tokenizers, openai, llama_cpp")
    parser.add_argument("--torch-python", default=None, help="Python with torch and transformers (default: --python)")
    parser.add_argument("--smollm2", default=os.environ.get("UNDERSTUDY_SMOLLM2_GGUF"), help="SmolLM2-135M GGUF")
    parser.add_argument("--out", help="also write the JSON document here")
    parser.add_argument("--markdown", action="store_true", help="print README's table from the document on stderr")
    args = parser.parse_args()
    torch_python = args.torch_python or args.python
    binary = args.binary
    figures = {}
    document = {"machine": machine(), "binary": binary, "figures": figures}
    work = tempfile.mkdtemp(prefix="understudy-bench-all-")
    data = os.path.join(work, "data")

    def us(*command):
        return run_json([binary, "--data-dir", data, *command])

    section("bootstrap", figures, lambda: run_json([binary, "bench", "bootstrap", "--traces", "500"]))
    section("capture", figures, lambda: run_json([binary, "bench", "capture"]))

    # A dataset and a small trained model for the sections that need them.
    def prepare():
        us("bootstrap", "--traces", "300", "--seed", "11", "--json")
        built = us("build-dataset", "--max-seq-len", "1024", "--json")
        trained = us("train", "--phase", "sft", "--max-steps", "40", "--batch-size", "4", "--json")
        return {"dataset_dir": built["dir"], "model_id": trained["model_id"]}

    section("prepare", figures, prepare)
    prepared = figures["prepare"]

    def tokenization():
        if "dataset_dir" not in prepared:
            raise RuntimeError("no dataset (prepare failed)")
        if not has_modules(args.python, "tokenizers"):
            ours = run_json([binary, "bench", "tokenize", "--dataset-dir", prepared["dataset_dir"]])
            return {"understudy": ours, "python_tokenizers": {"missing": "pip install tokenizers"}}
        return run_json([args.python, os.path.join(HERE, "tokenize_speed.py"), prepared["dataset_dir"], binary])

    section("tokenization", figures, tokenization)

    def sft():
        if not has_modules(torch_python, "torch", "transformers"):
            ours = run_json([binary, "bench", "sft", "--batch-size", "4", "--seq-len", "512", "--steps", "8"])
            return {"understudy": ours, "pytorch": {"missing": "pip install torch transformers (or --torch-python)"}}
        return run_json([torch_python, os.path.join(HERE, "sft_speed.py"), binary])

    section("sft", figures, sft)

    def sft_dataset():
        if "dataset_dir" not in prepared:
            raise RuntimeError("no dataset (prepare failed)")
        if not has_modules(torch_python, "torch", "transformers"):
            ours = run_json([binary, "bench", "sft", "--dataset-dir", prepared["dataset_dir"], "--batch-size", "2",
                             "--seq-len", "1024", "--steps", "8"])
            return {"understudy_tokens_per_second": ours["tokens_per_second"], "understudy": ours,
                    "pytorch": {"missing": "pip install torch transformers (or --torch-python)"}}
        return run_json([torch_python, os.path.join(HERE, "sft_speed.py"), binary, "--dataset", prepared["dataset_dir"]])

    section("sft_dataset", figures, sft_dataset)

    def lora():
        if not args.smollm2 or not os.path.exists(args.smollm2):
            return {"missing": "SmolLM2-135M GGUF (--smollm2 or UNDERSTUDY_SMOLLM2_GGUF)"}
        if not has_modules(torch_python, "torch", "transformers", "peft", "gguf"):
            ours = run_json([binary, "bench", "lora", "--model", args.smollm2, "--batch-size", "2", "--seq-len", "256",
                             "--steps", "3"])
            return {"understudy_seconds_per_step": ours["seconds_per_step"], "understudy": ours,
                    "peft": {"missing": "pip install torch transformers peft gguf (or --torch-python)"}}
        return run_json([torch_python, os.path.join(HERE, "lora_speed.py"), args.smollm2, binary])

    section("lora", figures, lora)

    def export():
        if "model_id" not in prepared:
            raise RuntimeError("no model (prepare failed)")
        return us("bench", "export", "--model", prepared["model_id"])

    section("export", figures, export)

    def evaluation():
        if "model_id" not in prepared:
            raise RuntimeError("no model (prepare failed)")
        result = us("eval", "--model", prepared["model_id"], "--suite", "heldout", "--limit", "20", "--json")
        return {"cases": result["overall"]["cases"], "cases_per_second": result.get("cases_per_second"),
                "eval_run_id": result["eval_run_id"]}

    section("eval", figures, evaluation)

    def serve_one(gguf, name):
        if not has_modules(args.python, "openai", "llama_cpp"):
            return {"missing": "pip install openai llama-cpp-python"}
        port = free_port()
        server = subprocess.Popen([binary, "--data-dir", data, "serve", "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(120):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    time.sleep(0.5)
            return run_json([args.python, os.path.join(HERE, "serve_speed.py"), "--base", base, "--model", name,
                             "--gguf", gguf, "--runs", "3", "--max-tokens", "64", "--concurrency", "16"])
        finally:
            server.terminate()
            server.wait(timeout=30)

    def serving():
        if "model_id" not in prepared:
            raise RuntimeError("no model (prepare failed)")
        exported = us("export", "--model", prepared["model_id"], "--quant", "q8_0", "--parity-prompts", "1", "--json")
        gguf = next(f["path"] for f in exported["files"] if f["format"] == "gguf")
        return serve_one(gguf, "understudy")

    section("serve_tiny_q8_0", figures, serving)

    def serving_smollm2():
        if not args.smollm2 or not os.path.exists(args.smollm2):
            return {"missing": "SmolLM2-135M GGUF (--smollm2 or UNDERSTUDY_SMOLLM2_GGUF)"}
        exported = us("export", "--model-path", args.smollm2, "--quant", "q8_0", "--name", "smollm2-bench",
                      "--parity-prompts", "1", "--json")
        gguf = next(f["path"] for f in exported["files"] if f["format"] == "gguf")
        return serve_one(gguf, "smollm2-bench")

    section("serve_smollm2_q8_0", figures, serving_smollm2)

    text = json.dumps(document, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if args.markdown:
        print(markdown(document), file=sys.stderr)


def markdown(document):
    """README's performance rows from the document."""
    f = document["figures"]
    m = document["machine"]

    def get(*path, default="—"):
        value = f
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return default
            value = value[key]
        return value

    def num(value, digits=0):
        return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else str(value)

    rows = [
        ("bootstrap", f"{num(get('bootstrap', 'traces_per_second'))} traces/s (500 traces)"),
        ("capture", f"{num(get('capture', 'MB/s'), 1)} MB/s, {num(get('capture', 'traces/s'))} traces/s "
                    f"({num(get('capture', 'bytes', default=0) / 1e6, 1)} MB of transcripts)"),
        ("tokenization", f"Understudy {num(get('tokenization', 'understudy_rust', 'batch_tokens_per_second'))} tok/s batched; "
                         f"Python tokenizers {num(get('tokenization', 'python_tokenizers', 'batch_tokens_per_second'))}"),
        ("SFT tiny, 4 × 512", f"Understudy {num(get('sft', 'understudy_tokens_per_second'))} tok/s; PyTorch "
                              f"{num(get('sft', 'pytorch_tokens_per_second'))} (ratio {get('sft', 'ratio_understudy_over_pytorch')})"),
        ("SFT tiny on bootstrap examples, 2 × ≤1024", f"Understudy {num(get('sft_dataset', 'understudy_tokens_per_second'))} tok/s; "
                                                    f"PyTorch {num(get('sft_dataset', 'pytorch_tokens_per_second'))} "
                                                    f"(ratio {get('sft_dataset', 'ratio_understudy_over_pytorch')})"),
        ("LoRA r8 q/k/v/o on SmolLM2-135M, 2 × 256", f"Understudy {num(get('lora', 'understudy_seconds_per_step'), 2)} s/step; "
                                                    f"PyTorch + PEFT {num(get('lora', 'peft_seconds_per_step'), 2)} "
                                                    f"(ratio {get('lora', 'ratio_understudy_speed_over_peft')})"),
        ("export, tiny", ", ".join(f"{q['quant']} {q.get('write_seconds', 0):.2f} s, {q.get('megabytes', 0):.1f} MB, "
                                   f"greedy agreement {q.get('greedy_token_agreement', '—')}"
                                   for q in get('export', 'quants', default=[]))),
        ("eval", f"{num(get('eval', 'cases_per_second'), 2)} cases/s"),
    ]
    for key, label in (("serve_tiny_q8_0", "serve tiny q8_0"), ("serve_smollm2_q8_0", "serve SmolLM2-135M q8_0")):
        rows.append((label, f"decode {num(get(key, 'understudy', 'decode_tokens_per_second'))} tok/s vs llama.cpp "
                            f"{num(get(key, 'llama_cpp', 'decode_tokens_per_second'))}; first token "
                            f"{num(1000 * get(key, 'understudy', 'ttft_seconds', default=0), 1)} ms vs "
                            f"{num(1000 * get(key, 'llama_cpp', 'ttft_seconds', default=0), 1)} ms; 16 streams "
                            f"{num(get(key, 'concurrent', 'aggregate_tokens_per_second'))} tok/s aggregate"))
    lines = [f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB) by `./run.sh bench`:", "",
             "| what | figure |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
