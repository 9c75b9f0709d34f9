"""Key release latency through the embedded broker on loopback (issue 4, "Speed").

Each release is what ``%release_key kbs://...`` does: a fresh EC P-256 ephemeral key, ``auth``,
evidence from the simulated TEE bound to the nonce and key, ``attest`` (the broker verifies the
SNP-layout report and its chain), ``resource`` (appraisal under the simulated-demo policy, the
key sealed at rest opened, and a JWE to the ephemeral key), then the JWE opened. Latency is
measured per release, wall clock, from the client's first byte to the opened key.

Clients are threads in this process (one ``http.client`` connection each, as the kernel's
client uses). The broker runs either as ``jupyter-cc kbs serve`` in its own process
(``--broker process``, default: how it is deployed) or in a thread of this process
(``--broker thread``: broker and clients then share one interpreter lock). Bounded loops:
1 client does 20 warm-up then 200 releases; 32 clients do 2 warm-up then 20 releases each
(640 samples), all started together behind a barrier.

Run: ``.venv/bin/python benchmarks/bench_release.py [--broker process|thread] [--profile]``.
Target: p99 <= 50 ms at 32 concurrent clients.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_P99_MS = 50.0


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def run_clients(uri: str, clients: int, warmup: int, rounds: int) -> list[float]:
    from jupyter_cc.keys import release

    barrier = threading.Barrier(clients)
    samples: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            for _ in range(warmup):
                release(uri, tee="sim")
            barrier.wait()
            for _ in range(rounds):
                start = time.perf_counter()
                key = release(uri, tee="sim")
                samples[i].append((time.perf_counter() - start) * 1000)
                assert len(key.material) == 32
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [s for per in samples for s in per]


def report(label: str, samples: list[float], wall: float) -> bool:
    p50, p99 = statistics.median(samples), percentile(samples, 99)
    ok = p99 <= TARGET_P99_MS
    print(
        f"{label:>10}: n={len(samples)} p50 {p50:.1f} ms  p99 {p99:.1f} ms  max {max(samples):.1f} ms  "
        f"throughput {len(samples) / wall:.0f}/s  p99 <= {TARGET_P99_MS:.0f} ms: {'yes' if ok else 'NO'}"
    )
    return ok


def cache_simulated_tee() -> None:
    """What-if for --cache-sim: load the simulated TEE once per folder instead of on every use.

    ``evidence.verify`` (broker) and ``collect_simulated`` (client) both re-read and re-parse
    the simulated chain and key from disk for every report; this patch measures what a cache
    in ``jupyter_cc.attest.sim`` would save. It changes nothing that is checked.
    """
    from jupyter_cc.attest.sim import SimulatedTee

    cache: dict[object, SimulatedTee] = {}
    load, load_or_create = SimulatedTee.load.__func__, SimulatedTee.load_or_create.__func__  # type: ignore[attr-defined]

    def cached_load(cls: type[SimulatedTee], directory: Path | None = None) -> SimulatedTee:
        key = ("load", directory)
        if key not in cache:
            cache[key] = load(cls, directory)
        return cache[key]

    def cached_load_or_create(
        cls: type[SimulatedTee], directory: Path | None = None, **kw: object
    ) -> SimulatedTee:
        key = ("create", directory)
        if key not in cache:
            cache[key] = load_or_create(cls, directory, **kw)
        return cache[key]

    SimulatedTee.load = classmethod(cached_load)  # type: ignore[method-assign,assignment]
    SimulatedTee.load_or_create = classmethod(cached_load_or_create)  # type: ignore[method-assign,assignment,arg-type]


def serve_child(db: str, cache_sim: bool) -> int:
    """The broker process: ``jupyter-cc kbs serve`` (optionally with the --cache-sim what-if)."""
    if cache_sim:
        cache_simulated_tee()
    from jupyter_cc.cli.kbs import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True), argparse.ArgumentParser)
    ns = parser.parse_args(
        ["kbs", "serve", "--port", "0", "--db", db, "--insecure-http", "--attest-rate", "1e6"]
    )
    try:
        status: int = ns.func(ns)
    except KeyboardInterrupt:
        return 0
    return status


def profile_broker(store: object, uri_for: object) -> None:
    """Where the broker's CPU time goes: cProfile with a per-thread CPU clock, broker loop only."""
    import asyncio
    import logging

    import tornado.netutil

    from jupyter_cc.kbs.broker import Broker
    from jupyter_cc.kbs.server import _server
    from jupyter_cc.keys import release

    logging.getLogger("tornado.access").setLevel(logging.ERROR)
    profiler = cProfile.Profile(time.thread_time)
    broker = Broker(store, attest_rate=1e6, attest_burst=10**6)  # type: ignore[arg-type]  # one client: no rate limit
    rounds = 300

    async def serve_until_done() -> None:
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = _server(broker, None)
        server.add_sockets(sockets)
        uri = uri_for(sockets[0].getsockname()[1])  # type: ignore[operator]
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def client() -> None:
            for _ in range(20):
                release(uri, tee="sim")
            loop.call_soon_threadsafe(profiler.enable)
            for _ in range(rounds):
                release(uri, tee="sim")
            loop.call_soon_threadsafe(done.set)

        threading.Thread(target=client).start()
        await done.wait()
        profiler.disable()
        server.stop()

    asyncio.run(serve_until_done())
    stats = pstats.Stats(profiler)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    print(
        f"\nbroker CPU per release (1 client, {rounds} releases, under cProfile): "
        f"{total / rounds * 1000:.2f} ms; top by own time:"
    )
    stats.sort_stats("tottime").print_stats(12)
    stats.sort_stats("cumulative").print_stats(r"jupyter_cc|joserfc|sqlite|policy", 25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=("process", "thread"), default="process")
    parser.add_argument("--profile", action="store_true", help="also profile the broker's CPU per release")
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="what-if: load the simulated TEE once (see cache_simulated_tee)",
    )
    parser.add_argument("--child-serve", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_serve:
        return serve_child(args.child_serve, args.cache_sim)
    if args.cache_sim:
        cache_simulated_tee()

    tmp = Path(tempfile.mkdtemp(prefix="bench-release-"))
    os.environ["JUPYTER_DATA_DIR"] = str(tmp / "data")

    from jupyter_cc.attest.sim import SimulatedTee
    from jupyter_cc.kbs.broker import Broker
    from jupyter_cc.kbs.server import start_in_thread
    from jupyter_cc.kbs.store import KeyStore

    SimulatedTee.load_or_create()  # made once, shared by the broker and the clients
    db = tmp / "kbs" / "kbs.sqlite"
    store = KeyStore(db)
    policy = (ROOT / "jupyter_cc" / "policies" / "simulated.toml").read_text()
    store.add("bench/key/k", os.urandom(32), policy_text=policy)

    import cryptography
    import tornado

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, tornado {tornado.version}, "
        f"cryptography {cryptography.__version__}; broker in a {args.broker}"
        + ("; simulated TEE cached (what-if)" if args.cache_sim else "")
    )
    if args.profile:
        profile_broker(store, lambda port: f"kbs+http://127.0.0.1:{port}/bench/key/k")

    proc: subprocess.Popen[str] | None = None
    running = None
    if args.broker == "process":
        store.close()
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child-serve", str(db)]
            + (["--cache-sim"] if args.cache_sim else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=dict(os.environ),
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    else:
        running = start_in_thread(Broker(store, attest_rate=1e6, attest_burst=10**6))
        port = running.port
    uri = f"kbs+http://127.0.0.1:{port}/bench/key/k"

    ok = True
    try:
        start = time.perf_counter()
        samples = run_clients(uri, 1, 20, 200)
        ok &= report("1 client", samples, time.perf_counter() - start)
        start = time.perf_counter()
        samples = run_clients(uri, 32, 2, 20)
        ok &= report("32 clients", samples, time.perf_counter() - start)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
        if running is not None:
            running.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
