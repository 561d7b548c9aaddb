"""Overload and slow clients against a running `understudy serve`: N concurrent streamed chat
completions (each completes or gets 429 with Retry-After), a client that sends a streamed request
and reads nothing (how long its decoding slot stays taken after it gives up), and the server's
resident memory before and after M short requests. Prints one JSON document.

    python3 bench/overload.py --base http://127.0.0.1:8080 --model NAME --pid SERVER_PID [--streams 64] [--requests 1000]
"""
import argparse
import asyncio
import json
import re
import socket
import time
import urllib.request
from urllib.parse import urlparse

import openai
from openai import AsyncOpenAI

MESSAGES = [{"role": "system", "content": "You are a coding agent. Use the tools."},
            {"role": "user", "content": "Where is the login function defined?"}]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def gauge(base, name):
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


async def one_stream(client, model, max_tokens):
    started = time.perf_counter()
    try:
        stream = await client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=max_tokens, stream=True,
                                                      temperature=0.7, seed=int(started * 1000) % 1000)
        finish = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        return {"outcome": "completed" if finish else "no_finish", "seconds": time.perf_counter() - started}
    except openai.RateLimitError as error:
        retry_after = error.response.headers.get("retry-after")
        return {"outcome": "429", "retry_after": retry_after}
    except Exception as error:  # anything else is a failure to report
        return {"outcome": "error", "error": repr(error)}


async def concurrent_streams(base, model, streams, max_tokens):
    client = AsyncOpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
    started = time.perf_counter()
    results = await asyncio.gather(*[one_stream(client, model, max_tokens) for _ in range(streams)])
    outcomes = {}
    for result in results:
        outcomes[result["outcome"]] = outcomes.get(result["outcome"], 0) + 1
    limited = [r for r in results if r["outcome"] == "429"]
    return {
        "streams": streams,
        "max_tokens": max_tokens,
        "outcomes": outcomes,
        "all_429_have_retry_after": all(r.get("retry_after") for r in limited),
        "retry_after_values": sorted({r.get("retry_after") for r in limited if r.get("retry_after")}),
        "errors": [r["error"] for r in results if r["outcome"] == "error"][:3],
        "wall_seconds": time.perf_counter() - started,
    }


def silent_client(base, model, give_up_seconds):
    """Send a long streamed request, read nothing, close after `give_up_seconds`; then time how
    long the server keeps decoding it."""
    url = urlparse(base)
    body = json.dumps({"model": model, "messages": MESSAGES, "max_tokens": 4000, "stream": True, "temperature": 1.0,
                       "ignore_eos": True}).encode()
    connection = socket.create_connection((url.hostname, url.port), timeout=30)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + url.netloc.encode() +
                       b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() +
                       b"\r\nConnection: close\r\n\r\n" + body)
    time.sleep(0.5)
    active_while_connected = gauge(base, "understudy_queue_active")
    time.sleep(max(0.0, give_up_seconds - 0.5))
    connection.close()
    closed = time.perf_counter()
    freed_after = None
    while time.perf_counter() - closed < 60:
        if gauge(base, "understudy_queue_active") == 0:
            freed_after = time.perf_counter() - closed
            break
        time.sleep(0.05)
    return {"client_gave_up_after_seconds": give_up_seconds, "active_while_connected": active_while_connected,
            "slot_freed_seconds_after_close": freed_after}


async def many_requests(base, model, requests, concurrency):
    client = AsyncOpenAI(base_url=base + "/v1", api_key="none", max_retries=5, timeout=600)
    semaphore = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(i):
        nonlocal failures
        async with semaphore:
            try:
                await client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, seed=i, temperature=0.5)
            except Exception:
                failures += 1

    started = time.perf_counter()
    await asyncio.gather(*[one(i) for i in range(requests)])
    return {"requests": requests, "concurrency": concurrency, "failures": failures,
            "wall_seconds": time.perf_counter() - started}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--stream-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--give-up", type=float, default=2.0)
    args = parser.parse_args()
    out = {"benchmark": "overload", "model": args.model}
    # Warm up (loads the model) before the first memory reading.
    asyncio.run(many_requests(args.base, args.model, 4, 1))
    out["rss_kib_before"] = rss_kib(args.pid)
    out["concurrent"] = asyncio.run(concurrent_streams(args.base, args.model, args.streams, args.stream_tokens))
    out["silent_client"] = silent_client(args.base, args.model, args.give_up)
    out["many"] = asyncio.run(many_requests(args.base, args.model, args.requests, 8))
    out["rss_kib_after"] = rss_kib(args.pid)
    out["rss_growth_kib"] = out["rss_kib_after"] - out["rss_kib_before"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
