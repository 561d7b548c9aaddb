"""Serving speed: time to first token and decode tokens/s through Understudy's OpenAI-compatible
endpoint (official `openai` client, streaming), next to llama.cpp (`llama-cpp-python`) on the same
GGUF in the same run, plus aggregate throughput with N concurrent streams. Prints one JSON document.

    python3 bench/serve_speed.py --base http://127.0.0.1:8080 --model NAME --gguf FILE.gguf [--runs 3] [--max-tokens 64] [--concurrency 16]
"""
import argparse
import asyncio
import json
import time

from openai import AsyncOpenAI, OpenAI

PROMPTS = [
    "<|im_start|>user\nWhere is the authentication token validated in this repository?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhich test is failing and why?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nFind every place the CORS policy is configured.<|im_end|>\n<|im_start|>assistant\n",
]


def ours(client, model, prompt, max_tokens):
    start = time.perf_counter()
    first, pieces, usage = None, 0, None
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            pieces += 1
            if first is None:
                first = time.perf_counter()
        if chunk.usage:
            usage = chunk.usage
    end = time.perf_counter()
    tokens = usage.completion_tokens if usage else pieces
    first = first or end
    return {"ttft": first - start, "tokens": tokens, "decode_tps": (tokens - 1) / (end - first) if tokens > 1 and end > first else 0.0}


def llama_cpp(llm, prompt, max_tokens):
    start = time.perf_counter()
    first, tokens = None, 0
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0, stream=True):
        tokens += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    first = first or end
    return {"ttft": first - start, "tokens": tokens, "decode_tps": (tokens - 1) / (end - first) if tokens > 1 and end > first else 0.0}


def summarise(rows):
    return {
        "ttft_seconds": sum(r["ttft"] for r in rows) / len(rows),
        "decode_tokens_per_second": sum(r["decode_tps"] for r in rows) / len(rows),
        "tokens": sum(r["tokens"] for r in rows),
    }


async def concurrent(base, model, n, max_tokens):
    client = AsyncOpenAI(base_url=base + "/v1", api_key="bench", max_retries=0)

    async def one(i):
        response = await client.completions.create(model=model, prompt=PROMPTS[i % len(PROMPTS)], max_tokens=max_tokens, temperature=0)
        return response.usage.completion_tokens

    start = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    wall = time.perf_counter() - start
    done = [r for r in results if isinstance(r, int)]
    return {"streams": n, "completed": len(done), "failed": n - len(done), "tokens": sum(done), "wall_seconds": wall,
            "aggregate_tokens_per_second": sum(done) / wall}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    client = OpenAI(base_url=args.base + "/v1", api_key="bench", max_retries=0)
    ours(client, args.model, PROMPTS[0], 4)  # load the model
    our_rows = [ours(client, args.model, PROMPTS[i % len(PROMPTS)], args.max_tokens) for i in range(args.runs)]
    from llama_cpp import Llama
    llm = Llama(model_path=args.gguf, n_ctx=2048, n_threads=2, verbose=False)
    llama_cpp(llm, PROMPTS[0], 4)
    their_rows = [llama_cpp(llm, PROMPTS[i % len(PROMPTS)], args.max_tokens) for i in range(args.runs)]
    del llm
    a, b = summarise(our_rows), summarise(their_rows)
    print(json.dumps({
        "benchmark": "serve",
        "model": args.model,
        "gguf": args.gguf,
        "understudy": a,
        "llama_cpp": b,
        "decode_ratio_understudy_over_llama_cpp": a["decode_tokens_per_second"] / b["decode_tokens_per_second"] if b["decode_tokens_per_second"] else None,
        "ttft_ratio_understudy_over_llama_cpp": a["ttft_seconds"] / b["ttft_seconds"] if b["ttft_seconds"] else None,
        "concurrent": asyncio.run(concurrent(args.base, args.model, args.concurrency, args.max_tokens)),
    }, indent=2))


if __name__ == "__main__":
    main()
