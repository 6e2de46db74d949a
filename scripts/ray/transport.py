"""What one Ray Serve handle call costs, per way of calling (issue #11).

A throwaway deployment that does no work is called 300 times one at a time (latency) and 600 times
from 32 concurrent callers (calls/s), unary and streaming with 1-3 messages; CPU per call is read
from /proc for the caller and the replica. Serve reads its tuning variables when it is imported, so
each variant runs in a fresh interpreter: the variants are separate processes, run back to back.

    .venv/bin/python scripts/ray/transport.py          # about 4 minutes on two cores

Prints one markdown table (BENCHMARKS.md "INFERENCE=ray: the transport tuned").
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

VARIANTS = {  # name → (environment, handle over gRPC, Serve access log)
    "Serve's defaults": ({}, False, True),
    "no access log": ({}, False, False),
    "+ gRPC handle": ({}, True, False),
    "+ router and user code on the main loop (the bot's setting)": (
        {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0", "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}, True, False),
}
CASES = ("unary", "stream 1", "stream 2", "stream 3")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(grpc: bool, access_log: bool) -> dict:
    import ray
    from ray import serve

    @serve.deployment(max_ongoing_requests=200, logging_config={"enable_access_log": access_log})
    class Echo:
        def pid(self) -> int:
            return os.getpid()

        async def unary(self, x):
            return x

        async def stream(self, x, n: int):
            for i in range(n):
                yield ("event", i, x)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")
    handle = serve.run(Echo.bind(), name="transport", route_prefix=None).options(_by_reference=not grpc)
    replica = await handle.pid.remote()
    payload = {"label": "POSITIVE", "score": 0.98}

    async def call(case: str) -> None:
        if case == "unary":
            await handle.unary.remote(payload)
        else:
            async for _ in handle.options(stream=True).stream.remote(payload, int(case[-1])):
                pass

    out = {}
    for case in CASES:
        for _ in range(20):  # warm
            await call(case)
        latencies, mine, theirs = [], time.process_time(), cpu_seconds(replica)
        for _ in range(300):
            began = time.perf_counter()
            await call(case)
            latencies.append(time.perf_counter() - began)
        latencies.sort()
        gate = asyncio.Semaphore(32)

        async def one(case=case, gate=gate) -> None:
            async with gate:
                await call(case)

        began = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(600)))
        rate = 600 / (time.perf_counter() - began)
        out[case] = {"p50": latencies[150] * 1000, "rate": rate,
                     "cpu": ((time.process_time() - mine) + (cpu_seconds(replica) - theirs)) / 900 * 1000}
    serve.shutdown()
    ray.shutdown()
    return out


def main() -> None:
    if len(sys.argv) == 3:  # one variant, in the environment its parent set
        print(json.dumps(asyncio.run(measure(sys.argv[1] == "1", sys.argv[2] == "1"))))
        return
    print("| way of calling | " + " | ".join(f"{c}: p50 ms, calls/s at 32, CPU ms/call" for c in CASES) + " |")
    print("|---|" + "---|" * len(CASES))
    for name, (env, grpc, access_log) in VARIANTS.items():
        done = subprocess.run([sys.executable, __file__, str(int(grpc)), str(int(access_log))], capture_output=True,
                              text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled", **env}, check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {name} | " + " | ".join(f"{figures[c]['p50']:.1f}, {figures[c]['rate']:.0f}, {figures[c]['cpu']:.2f}"
                                          for c in CASES) + " |", flush=True)


if __name__ == "__main__":
    main()
