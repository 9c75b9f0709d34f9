"""``make demo``: the main job end to end on the embedded simulated TEE.

1. The data owner: a synthetic patient table, sealed under a fresh key that goes into the
   embedded key broker with a policy accepting the simulated TEE (the key file is then erased).
2. The broker (``jupyter-cc kbs serve``, HTTPS with the certificate it made) on a free loopback
   port, its certificate's fingerprint pinned in the notebook's key URI (``?cert-sha256=``), and
   a ``demo`` profile for the simulated CVM (the guest agent on this machine, transport ``local``).
3. ``examples/confidential-analysis.ipynb`` executed headless with nbclient in an ordinary
   kernel: attest, connect, release the key inside the TEE, analyse, declassify an aggregate,
   pull it back, and a refused pull.
4. A summary from the audit log and the executed notebook; everything started is stopped.

Everything lives in ``.demo/`` (your own Jupyter config is not touched). SIMULATED — not a
hardware TEE.
"""

from __future__ import annotations

import csv
import io
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from jupyter_cc import audit
from jupyter_cc.attest.kinds import SIMULATED_BANNER
from jupyter_cc.files import write_private
from jupyter_cc.kernelspec import simulated_policy_path
from jupyter_cc.profiles import Profile, save_profile
from jupyter_cc.seal.envelope import seal_bytes

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "confidential-analysis.ipynb"
RESOURCE = "demo/key/patients"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jupyter_cc(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_cc", *argv], capture_output=True, text=True, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"jupyter-cc {' '.join(argv[:2])} failed: {done.stderr.strip()}")
    return done


def synthetic_patients(n: int = 240, seed: int = 7) -> bytes:
    """A made-up table: nobody real is in it."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not cryptography
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["patient_id", "age", "age_band", "sex", "bmi", "hba1c"])
    for i in range(n):
        age = rng.randint(18, 90)
        band = f"{(age // 20) * 20}-{(age // 20) * 20 + 19}"
        bmi = round(rng.gauss(27, 4), 1)
        hba1c = round(max(4.0, rng.gauss(5.6 + (age - 18) * 0.012 + (bmi - 27) * 0.05, 0.6)), 1)
        writer.writerow([f"P{i:05d}", age, band, rng.choice("FM"), bmi, hba1c])
    return out.getvalue().encode()


def prepare(workdir: Path, policy: Path) -> Path:
    """Seal the table under a new broker key; return the sealed file. The key file is erased."""
    db = workdir / "kbs" / "kbs.sqlite"
    db.parent.mkdir(parents=True)
    key_file = workdir / "owner.key"
    key = os.urandom(32)
    write_private(key_file, key)
    try:
        jupyter_cc(
            "kbs", "add-key", RESOURCE, "--from-file", str(key_file), "--policy", str(policy), "--db", str(db)
        )
        sealed = workdir / "patients.sealed"
        sealed.write_bytes(bytes(seal_bytes(synthetic_patients(), key)))
    finally:
        key_file.unlink()
    return sealed


def wait_for_port(port: int, timeout: float, *, while_alive: subprocess.Popen[bytes] | None = None) -> bool:
    """Whether something listens on loopback ``port`` within ``timeout`` seconds (and before
    ``while_alive``, the process that should open it, exits)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            if (while_alive is not None and while_alive.poll() is not None) or time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def broker_pin(workdir: Path) -> str:
    """The SHA-256 fingerprint of the demo broker's certificate (made now if it is not yet).

    ``jupyter-cc kbs serve --db workdir/kbs/kbs.sqlite`` serves this same certificate, and
    ``jupyter-cc kbs info`` prints the same fingerprint.
    """
    from jupyter_cc.kbs.tls import ensure_identity

    return ensure_identity(workdir / "kbs").fingerprint


@contextmanager
def broker(workdir: Path) -> Iterator[str]:
    """``jupyter-cc kbs serve`` (HTTPS) on a free loopback port for the duration.

    Yields the broker's ``kbs://127.0.0.1:PORT``; a key URI under it is pinned with
    ``?cert-sha256=`` :func:`broker_pin`.
    """
    port = free_port()
    log = open(workdir / "kbs.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_cc",
            "kbs",
            "serve",
            "--port",
            str(port),
            "--db",
            str(workdir / "kbs" / "kbs.sqlite"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        if not wait_for_port(port, 30, while_alive=proc):
            raise RuntimeError(f"the key broker did not start: {(workdir / 'kbs.log').read_text()[-500:]}")
        yield f"kbs://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def execute(notebook: Path, out: Path, env: dict[str, str], cwd: Path) -> nbformat.NotebookNode:
    """Run ``notebook`` headless in an ordinary python3 kernel with ``env``; save it to ``out``."""
    nb = nbformat.read(notebook, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
        ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        nbformat.write(nb, out)
    return nb


def outputs_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("evalue", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def setup(workdir: Path) -> tuple[dict[str, str], Path]:
    """A fresh ``workdir``: the demo profile, the broker key and the sealed table."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    env = {
        "JUPYTER_CC_CONFIG": str(workdir / "jupyter_cc.toml"),
        "JUPYTER_CC_AUDIT_LOG": str(workdir / "audit.jsonl"),
    }
    os.environ.update(env)
    policy = simulated_policy_path()
    save_profile(Profile(name="demo", transport="local", tee="sim", policy=str(policy)))
    return env, prepare(workdir, policy)


def main() -> int:
    workdir = Path(os.environ.get("JUPYTER_CC_DEMO_DIR") or ROOT / ".demo")
    if sys.argv[1:] == ["--setup-only"]:
        # For binder/start: prepare, then print the environment as shell exports.
        env, sealed = setup(workdir)
        env.update(
            JUPYTER_CC_DEMO_DATA=str(sealed),
            JUPYTER_CC_DEMO_PROFILE="demo",
            JUPYTER_CC_DEMO_DIR=str(workdir),
            JUPYTER_CC_DEMO_DB=str(workdir / "kbs" / "kbs.sqlite"),
        )
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items()))
        return 0
    env, sealed = setup(workdir)
    policy = simulated_policy_path()
    where = sealed.relative_to(ROOT)
    print(f"data owner: sealed a synthetic patient table to {where} under broker key {RESOURCE}")
    with broker(workdir) as kbs:
        print(f"key broker: {kbs} (policy {policy.name}: the simulated TEE only)")
        pin = broker_pin(workdir)
        print(f"key broker certificate SHA-256 (pinned by the TEE): {pin}")
        env.update(
            JUPYTER_CC_DEMO_KBS=kbs,
            JUPYTER_CC_DEMO_KBS_PIN=pin,
            JUPYTER_CC_DEMO_DATA=str(sealed),
            JUPYTER_CC_DEMO_PROFILE="demo",
        )
        out = workdir / "confidential-analysis.executed.ipynb"
        print(f"running {NOTEBOOK.relative_to(ROOT)} headless ...")
        nb = execute(NOTEBOOK, out, env, workdir)
    entries = audit.read(workdir / "audit.jsonl")
    chain = audit.verify(workdir / "audit.jsonl")
    text = outputs_text(nb)
    attest = next((e for e in entries if e["event"] == "attest"), {})
    release = next((e for e in entries if e["event"] == "release"), {})
    declass = next((e for e in entries if e["event"] == "declassify"), {})
    rows = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("rows analysed:")),
        "?",
    )
    refused = next((line for line in text.splitlines() if "neither sealed nor declassified" in line), "")
    print(f"\nsummary ({SIMULATED_BANNER})")
    verdict = "PASSED" if attest.get("passed") else "FAILED"
    print(f"  verdict:       {verdict} under policy {attest.get('policy')}")
    print(f"  key released:  {release.get('key_id')} (fingerprint {release.get('key_fingerprint')})")
    print(f"  rows analysed: {rows} (inside the confidential kernel)")
    print(f"  declassified:  {declass.get('variable')} ({declass.get('reason')})")
    print(f"  refused pull:  {refused.strip() or 'none?'}")
    state = "verifies" if chain.ok else f"BROKEN: {chain.reason}"
    print(f"  audit log:     {len(entries)} entries, chain {state}")
    print(f"  notebook:      {out.relative_to(ROOT)}")
    print(
        "\nTo open the same in JupyterLab: pip install jupyterlab into .venv, then\n"
        f"  JUPYTER_CC_CONFIG={env['JUPYTER_CC_CONFIG']} .venv/bin/jupyter lab {NOTEBOOK.relative_to(ROOT)}\n"
        "(start a broker with '.venv/bin/jupyter-cc kbs serve --db .demo/kbs/kbs.sqlite' first, and set\n"
        "JUPYTER_CC_DEMO_KBS_PIN to the fingerprint it prints, which the notebook pins;\n"
        "the launcher also offers a 'Confidential Python (simulated)' kernel installed by 'make demo')."
    )
    ok = attest.get("passed") and release and declass and refused and chain.ok and rows != "?"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
