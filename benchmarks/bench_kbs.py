"""The key broker under load over HTTPS (issue 12, "Load"): one broker worker, N workers, raw TLS.

Three servers on loopback, measured in the same run so their ratios mean something on a shared
machine:

* ``raw TLS``: an asyncio TLS server answering every HTTP request with a fixed 2-byte body,
  same certificate kind (P-256) and TLS settings as the broker. One sample is one HTTPS request
  and response on a fresh connection (TCP, handshake and pin check included), since each
  release opens one connection. It is the floor a broker could reach on this machine.
* ``1 worker``: ``jupyter-cc kbs serve`` (HTTPS, generated certificate, pinned by the client).
* ``N workers``: ``jupyter-cc kbs serve --workers N`` (default: the machine's cores), sessions
  and nonces in the shared SQLite store.

One broker sample is one whole key release as ``%release_key kbs://...?cert-sha256=`` does it,
everything a TEE needs to get a key: a fresh EC P-256 ephemeral key; a new TCP connection, TLS
handshake and pin check; ``auth``; simulated evidence collected and bound to the nonce and key;
``attest`` (the broker verifies it in a worker thread and signs a token); ``resource`` (the
policy appraised, the release's audit entry written and flushed to disk, a JWE to the ephemeral
key); the JWE opened. The three requests share that one keep-alive connection, as
guest-components' HTTP client (reqwest) keeps its connection alive between them; no connection,
TLS session or token is carried from one release to the next, so every sample pays a full
handshake and a full attestation. Wall clock per sample.

Two cases per server. ``fresh``: as above, a whole release per sample (and for raw TLS one
request on a fresh connection). ``kept``: what a kernel pays for its second and later keys
from one broker (:class:`jupyter_cc.keys.kbs_client.KbsClient`): each client thread makes one
whole release in its warm-up, then every sample is one ``resource`` request on that kept,
pinned connection with the kept attestation token (the broker appraises the policy, writes and
flushes the audit entry, makes the JWE), the JWE opened with the session's key; for raw TLS one
keep-alive request on a kept connection. The kept samples are checked to have made no
``connect`` or ``attest``.

Clients: the 32 concurrent clients are threads spread over ``--procs`` processes (default: one
per core, at most 32), so the client side is not held to one interpreter lock, the way 32 TEEs
are 32 processes; one client is one thread. All connect from 127.0.0.1, so the brokers run with
``--attest-rate 1e6`` (the per-client ``/attest`` limit would otherwise be what is measured).
Bounded loops (:data:`ROUNDS`): fresh, 1 client does 20 warm-up then 200 samples and 32 clients
2 warm-up then 20 samples each (640); kept, 20 then 500, and 2 then 50 each (1600); the 32
start together behind a barrier.

Where the time goes, printed for every server: the CPU time per sample of the server process
(with its workers) and of the client processes, read from ``/proc`` and ``process_time``, and
the client's wall time per step (``connect``, ``auth``, ``evidence``, ``attest``, ``resource``,
``open``; :data:`jupyter_cc.keys.kbs_client.step_timer`). ``--profile`` adds a run of 200
sequential whole releases and one of 1000 kept-session releases against a 1-worker broker that
counts its CPU time (per thread) in each broker call: ``auth``, ``attest`` and within it
evidence verification and the token, ``session_for_token`` (the bearer token's check),
``release`` and within it the audit entry and the JWE, the session store; the remainder of the
process's CPU is HTTP, TLS and the event loop.

Targets (issue 12): 1 client p99 <= 5 ms; 32 clients p99 <= 50 ms and throughput >= 1.6x the
single-worker broker's, both for the N-worker broker; printed for both cases.

Run: ``.venv/bin/python benchmarks/bench_kbs.py [--workers N] [--procs P] [--profile]`` (about a
minute; two with ``--profile``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import os
import platform
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_ONE_P99_MS = 5.0
TARGET_MANY_P99_MS = 50.0
TARGET_SCALE = 1.6
STEPS = ("connect", "auth", "evidence", "attest", "resource", "open")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


class _StepClock:
    """Sums the client's step timings (kbs_client.step_timer) of the measured samples only."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.totals: dict[str, float] = collections.defaultdict(float)
        self.on = threading.local()

    def __call__(self, step: str, seconds: float) -> None:
        if getattr(self.on, "counting", False):
            with self.lock:
                self.totals[step] += seconds


def _client_threads(
    one: Callable[[], None], count: int, warmup: int, rounds: int, barrier: Any, clock: _StepClock
) -> tuple[list[float], list[BaseException]]:
    """``count`` threads each running ``one`` ``warmup`` then (after ``barrier``) ``rounds`` times."""
    samples: list[list[float]] = [[] for _ in range(count)]
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            for _ in range(warmup):
                one()
            barrier.wait()
            clock.on.counting = True
            for _ in range(rounds):
                start = time.perf_counter()
                one()
                samples[i].append((time.perf_counter() - start) * 1000)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [s for per in samples for s in per], errors


def _child_clients(
    one: Callable[[], None], count: int, warmup: int, rounds: int, barrier: Any, out: Any
) -> None:
    """A client process: its threads' samples, step sums and CPU seconds go to ``out``."""
    clock = _StepClock()
    _install_clock(clock)
    cpu = time.process_time()
    samples, errors = _client_threads(one, count, warmup, rounds, barrier, clock)
    out.put((samples, dict(clock.totals), time.process_time() - cpu, repr(errors[0]) if errors else None))


def _install_clock(clock: _StepClock | None) -> None:
    from jupyter_cc.keys import kbs_client

    kbs_client.step_timer = clock


def run_clients(
    one: Callable[[], None],
    clients: int,
    warmup: int,
    rounds: int,
    procs: int,
    server_cpu: Callable[[], float],
) -> dict[str, Any]:
    """``clients`` clients (threads over ``procs`` processes) each doing ``warmup`` + ``rounds`` samples.

    Returns the samples (ms), the wall time (s) from the barrier to the last sample, the
    server's and the clients' CPU seconds in that time, and the clients' step sums (s).
    """
    procs = max(1, min(procs, clients))
    if procs == 1:
        barrier: Any = threading.Barrier(clients + 1)
        clock = _StepClock()
        _install_clock(clock)
        box: dict[str, Any] = {}

        def run_all() -> None:
            box["samples"], box["errors"] = _client_threads(one, clients, warmup, rounds, barrier, clock)

        runner = threading.Thread(target=run_all)
        runner.start()
        cpu0 = time.process_time()
        start, server0 = _pass(barrier, server_cpu)
        runner.join()
        wall, server = time.perf_counter() - start, server_cpu() - server0
        _install_clock(None)
        if box["errors"]:
            raise box["errors"][0]
        return {
            "samples": box["samples"],
            "wall": wall,
            "server_cpu": server,
            "client_cpu": time.process_time() - cpu0,
            "steps": dict(clock.totals),
        }
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    out = ctx.Queue()
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    children = [
        ctx.Process(target=_child_clients, args=(one, n, warmup, rounds, barrier, out)) for n in shares
    ]
    for child in children:
        child.start()
    start, server0 = _pass(barrier, server_cpu)
    results = [out.get(timeout=600) for _ in children]
    wall, server = time.perf_counter() - start, server_cpu() - server0
    for child in children:
        child.join(timeout=30)
    failed = [r[3] for r in results if r[3]]
    if failed:
        raise RuntimeError(f"a client failed: {failed[0]}")
    steps: dict[str, float] = collections.defaultdict(float)
    for r in results:
        for step, spent in r[1].items():
            steps[step] += spent
    return {
        "samples": [s for r in results for s in r[0]],
        "wall": wall,
        "server_cpu": server,
        "client_cpu": sum(r[2] for r in results),
        "steps": dict(steps),
    }


def _pass(barrier: Any, server_cpu: Callable[[], float]) -> tuple[float, float]:
    """Wait at the start barrier with the clients; (start time, server CPU then)."""
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    return time.perf_counter(), server_cpu()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its children so far (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    for p in [pid, *map(int, children)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def serve_raw(cert: str, key: str) -> int:
    """The raw TLS server (child process): prints its port, answers ``200 {}`` to each request."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def serve_profiled(db: str) -> int:
    """``jupyter-cc kbs serve`` (1 worker) counting the CPU time of each broker call (child process).

    SIGUSR1 zeroes the counts; on SIGINT one line per call goes to stdout:
    ``PROFILE <name> <seconds> <calls>``, then ``PROFILE process <CPU seconds since zeroed> 0``.
    """
    from jupyter_cc import audit
    from jupyter_cc.cli import main as cli_main
    from jupyter_cc.kbs import broker, sessions, store

    totals: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter[str] = collections.Counter()
    since = [time.process_time()]

    def count(owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            began = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                totals[label] += time.thread_time() - began
                calls[label] += 1

        setattr(owner, name, counted)

    for name in ("auth", "attest", "release", "session", "session_for_token", "attest_wait"):
        count(broker.Broker, name, f"Broker.{name}")
    count(broker, "verify_tee_evidence", "  attest: verify_tee_evidence")
    from joserfc import jwt

    count(jwt, "encode", "  attest: token (ES256)")
    count(jwt, "decode", "  session_for_token: token check (ES256)")
    count(broker, "encrypt_response", "  release: JWE")
    count(audit, "record", "  release: audit entry (CPU; the flush waits off-CPU)")
    count(broker, "appraise", "  release: policy")
    count(store.KeyStore, "get", "  release: key store")
    for name in ("open", "get", "by_token", "consume_nonce", "save_attested", "attest_wait"):
        count(sessions.SessionStore, name, f"  sessions.{name}")

    def zero(*_: object) -> None:
        totals.clear()
        calls.clear()
        since[0] = time.process_time()

    signal.signal(signal.SIGUSR1, zero)
    try:
        cli_main(["kbs", "serve", "--port", "0", "--db", db, "--attest-rate", "1e6"])
    except KeyboardInterrupt:
        pass
    finally:
        for label, seconds in totals.items():
            print(f"PROFILE {label}|{seconds}|{calls[label]}", flush=True)
        print(f"PROFILE process|{time.process_time() - since[0]}|0", flush=True)
    return 0


def start_broker(db: Path, workers: int, *, profiled: bool = False) -> tuple[subprocess.Popen[str], int, str]:
    """``jupyter-cc kbs serve --workers N``; (process, port, certificate pin)."""
    if profiled:
        command = [sys.executable, __file__, "--child-profiled", str(db)]
    else:
        options = ("--workers", str(workers), "--attest-rate", "1e6")
        command = [
            sys.executable,
            "-m",
            "jupyter_cc",
            "kbs",
            "serve",
            "--port",
            "0",
            "--db",
            str(db),
            *options,
        ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=dict(os.environ)
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    port = int(lines[0].split("https://127.0.0.1:")[1].split("/")[0])
    pin = next(x for x in lines if "fingerprint:" in x).split("fingerprint:")[1].strip()
    return proc, port, pin


def stop(proc: subprocess.Popen[str]) -> str:
    """Interrupt the server and wait for it; what it printed since its first lines."""
    proc.send_signal(signal.SIGINT)
    try:
        rest, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        rest, _ = proc.communicate()
    return rest or ""


def _steps_line(steps: dict[str, float], count: int) -> str:
    parts = [f"{name} {steps[name] / count * 1000:.2f}" for name in STEPS if name in steps]
    return "client wall ms per sample: " + ", ".join(parts) if parts else ""


ROUNDS = {"fresh": ((20, 200), (2, 20)), "kept": ((20, 500), (2, 50))}
"""(warm-up, samples) for 1 client and for each of the 32 clients, per case."""


def measure(label: str, one: Callable[[], None], pid: int, procs: int, case: str) -> dict[str, float]:
    """1 client and 32 clients against ``one`` (server process ``pid``); prints the figures."""

    def server_cpu() -> float:
        return process_cpu(pid)

    (warm1, rounds1), (warm32, rounds32) = ROUNDS[case]
    single = run_clients(one, 1, warm1, rounds1, 1, server_cpu)
    many = run_clients(one, 32, warm32, rounds32, procs, server_cpu)
    if case == "kept":  # every measured sample must have been a kept-session request
        for run in (single, many):
            assert "attest" not in run["steps"], run["steps"]
            assert "connect" not in run["steps"], run["steps"]
    figures = {}
    for name, run in (("one", single), ("many", many)):
        n = len(run["samples"])
        figures[f"{name}_p50"] = statistics.median(run["samples"])
        figures[f"{name}_p99"] = percentile(run["samples"], 99)
        figures[f"{name}_rate"] = n / run["wall"]
        figures[f"{name}_server_cpu"] = run["server_cpu"] / n * 1000
        figures[f"{name}_client_cpu"] = run["client_cpu"] / n * 1000
    figures["throughput"] = figures["many_rate"]
    print(
        f"{label:>22}: 1 client p50 {figures['one_p50']:5.1f} / p99 {figures['one_p99']:5.1f} ms"
        f" ({figures['one_rate']:4.0f}/s) | 32 clients p50 {figures['many_p50']:6.1f} / p99"
        f" {figures['many_p99']:6.1f} ms, {figures['many_rate']:4.0f}/s",
        flush=True,
    )
    for name, run in (("1 client", single), ("32 clients", many)):
        key = "one" if name == "1 client" else "many"
        print(
            f"{'':>24}{name}: CPU ms per sample: server {figures[key + '_server_cpu']:.2f},"
            f" clients {figures[key + '_client_cpu']:.2f}; {_steps_line(run['steps'], len(run['samples']))}",
            flush=True,
        )
    return figures


def profile_broker(db: Path, case: str) -> None:
    """Sequential releases (``fresh``: whole ones, 200; ``kept``: on a kept session, 1000)
    against a 1-worker broker that counts CPU per broker call; prints it."""
    from jupyter_cc.keys.kbs_client import KbsClient, release_kbs

    proc, port, pin = start_broker(db, 1, profiled=True)
    uri = f"kbs://127.0.0.1:{port}/bench/key/k?cert-sha256={pin}"
    count = 200 if case == "fresh" else 1000
    client = KbsClient() if case == "kept" else None
    try:
        for _ in range(20):
            release_kbs(uri, tee="sim", client=client)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.2)
        for _ in range(count):
            release_kbs(uri, tee="sim", client=client)
    finally:
        if client is not None:
            client.close()
        out = stop(proc)
    rows: list[tuple[str, float, int]] = []
    for line in out.splitlines():
        if line.startswith("PROFILE "):
            name, spent, calls_made = line[8:].rsplit("|", 2)
            rows.append((name, float(spent), int(calls_made)))
    total = next((s for label, s, _ in rows if label == "process"), 0.0)
    what = "whole releases" if case == "fresh" else "releases on a kept session"
    print(f"profile (1 worker, {count} sequential {what}): broker CPU ms per release, by call", flush=True)
    for label, seconds, calls in sorted(rows, key=lambda r: -r[1]):
        if label != "process":
            print(f"  {label:<56} {seconds / count * 1000:6.2f}  ({calls} calls)", flush=True)
    top = sum(s for label, s, _ in rows if label.startswith("Broker."))
    print(f"  {'whole process':<56} {total / count * 1000:6.2f}", flush=True)
    print(
        f"  {'of which outside Broker calls (HTTP, TLS, event loop)':<56} {(total - top) / count * 1000:6.2f}"
    )


def _raw_samples(trust: Any, pid: int, procs: int, results: dict[tuple[str, str], dict[str, float]]) -> None:
    """The raw TLS server's two cases: a fresh connection per request, and a kept one."""

    def raw_round_trip() -> None:
        conn = trust.connection(30)  # a fresh connection, the pin checked, as a release does
        try:
            conn.request("GET", "/", headers={"Accept": "application/json"})
            resp = conn.getresponse()
            assert resp.read() == b"{}"
        finally:
            conn.close()

    kept_conns = threading.local()

    def raw_kept_round_trip() -> None:
        conn = getattr(kept_conns, "conn", None)
        if conn is None:  # each client thread opens its connection once (in its warm-up)
            conn = kept_conns.conn = trust.connection(30)
        conn.request("GET", "/", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        assert resp.read() == b"{}"
        assert not resp.will_close

    results["fresh", "raw TLS"] = measure("fresh: raw TLS", raw_round_trip, pid, procs, "fresh")
    results["kept", "raw TLS"] = measure("kept: raw TLS", raw_kept_round_trip, pid, procs, "kept")


def _broker_samples(
    label: str, uri: str, pid: int, procs: int, results: dict[tuple[str, str], dict[str, float]]
) -> None:
    """A broker's two cases: a whole release per sample, and a release on a kept session."""
    from jupyter_cc.keys import release
    from jupyter_cc.keys.kbs_client import KbsClient

    def one_release() -> None:
        assert len(release(uri, tee="sim").material) == 32

    clients = threading.local()

    def kept_release() -> None:
        client = getattr(clients, "client", None)
        if client is None:  # each client thread's first release is a whole one (warm-up)
            client = clients.client = KbsClient()
        assert len(client.release(uri, tee="sim").material) == 32

    results["fresh", label] = measure(f"fresh: {label}", one_release, pid, procs, "fresh")
    results["kept", label] = measure(f"kept: {label}", kept_release, pid, procs, "kept")


def _verdicts(results: dict[tuple[str, str], dict[str, float]], workers: int) -> bool:
    """Print the targets for both cases (for the N-worker broker); True if all are met."""
    ok = True
    for case in ("fresh", "kept"):
        single, multi, raw_tls = (results[case, k] for k in ("1 worker", f"{workers} workers", "raw TLS"))
        scale = multi["throughput"] / single["throughput"]
        checks = [
            (
                f"1 client p99 {multi['one_p99']:.1f} <= {TARGET_ONE_P99_MS:g} ms",
                multi["one_p99"] <= TARGET_ONE_P99_MS,
            ),
            (
                f"32 clients p99 {multi['many_p99']:.1f} <= {TARGET_MANY_P99_MS:g} ms",
                multi["many_p99"] <= TARGET_MANY_P99_MS,
            ),
            (f"throughput {scale:.2f}x the single worker's >= {TARGET_SCALE}x", scale >= TARGET_SCALE),
        ]
        raw_ratio = multi["throughput"] / raw_tls["throughput"]
        print(f"{case}: N-worker broker throughput is {raw_ratio:.2f}x raw TLS round trips'")
        for what, passed in checks:
            print(f"{case}: target {what}: {'yes' if passed else 'NO'}")
            ok = ok and passed
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cores = os.cpu_count() or 2
    parser.add_argument("--workers", type=int, default=cores, help="the N-worker broker's N")
    parser.add_argument(
        "--procs", type=int, default=min(32, cores), help="client processes for the 32 clients"
    )
    parser.add_argument("--profile", action="store_true", help="also count the broker's CPU per call")
    parser.add_argument("--child-raw", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    parser.add_argument("--child-profiled", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_raw:
        return serve_raw(*args.child_raw)
    if args.child_profiled:
        return serve_profiled(args.child_profiled)

    tmp = Path(tempfile.mkdtemp(prefix="bench-kbs-"))
    os.environ["JUPYTER_DATA_DIR"] = str(tmp / "data")
    os.environ["JUPYTER_CC_CONFIG"] = str(tmp / "jupyter_cc.toml")

    import cryptography
    import tornado

    from jupyter_cc.attest.sim import SimulatedTee
    from jupyter_cc.kbs.store import KeyStore
    from jupyter_cc.kbs.tls import ensure_identity
    from jupyter_cc.keys.broker_trust import resolve_trust

    SimulatedTee.load_or_create()  # made once, shared by the brokers and the clients
    db = tmp / "kbs" / "kbs.sqlite"
    store = KeyStore(db)
    store.add(
        "bench/key/k", os.urandom(32), policy_text=(ROOT / "jupyter_cc/policies/simulated.toml").read_text()
    )
    store.close()
    raw_identity = ensure_identity(tmp / "raw")

    print(
        f"machine: {platform.machine()}, {cores} cores, load average {os.getloadavg()[0]:.2f},"
        f" Python {platform.python_version()}, tornado {tornado.version}, cryptography"
        f" {cryptography.__version__}, {ssl.OPENSSL_VERSION}; N = {args.workers} workers,"
        f" 32 clients in {max(1, min(args.procs, 32))} processes",
        flush=True,
    )
    results: dict[tuple[str, str], dict[str, float]] = {}

    raw = subprocess.Popen(
        [sys.executable, __file__, "--child-raw", str(raw_identity.cert_path), str(raw_identity.key_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert raw.stdout is not None
        raw_port = int(raw.stdout.readline())
        trust = resolve_trust("127.0.0.1", raw_port, tls=True, uri_pin=raw_identity.fingerprint)
        _raw_samples(trust, raw.pid, args.procs, results)
    finally:
        stop(raw)

    for label, workers in (("1 worker", 1), (f"{args.workers} workers", args.workers)):
        proc, port, pin = start_broker(db, workers)
        try:
            _broker_samples(
                label, f"kbs://127.0.0.1:{port}/bench/key/k?cert-sha256={pin}", proc.pid, args.procs, results
            )
        finally:
            stop(proc)

    if args.profile:
        profile_broker(db, "fresh")
        profile_broker(db, "kept")

    ok = _verdicts(results, args.workers)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
