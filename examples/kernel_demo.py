"""A confidential kernel on the embedded simulated TEE, start to finish (part of ``make demo``).

Starts a kernel through ``confidential-provisioner`` (transport ``local``, simulated TEE), shows
the verdict it was started under, runs code in it, and shows that the same kernel is refused
under the default policy. SIMULATED — not a hardware TEE.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

from jupyter_cc.attest.kinds import SIMULATED_BANNER
from jupyter_cc.kernelspec import kernelspec, simulated_policy_path
from jupyter_cc.provisioner import KernelRefusedError


def write_spec(root: Path, name: str, config: dict[str, object]) -> None:
    folder = root / "kernels" / name
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps(kernelspec(name, config)))


async def run(root: Path) -> int:
    write_spec(root, "cc-demo", {"transport": "local", "tee": "sim", "policy": str(simulated_policy_path())})
    write_spec(root, "cc-demo-default-policy", {"transport": "local", "tee": "sim"})

    print("\n== 8. A confidential kernel: attest first, then start ipykernel in the (simulated) TEE")
    km = AsyncKernelManager(kernel_name="cc-demo")
    await km.start_kernel()
    try:
        state = km.provisioner.attestation_state()
        claims = state["claims"]
        label = SIMULATED_BANNER if state["simulated"] else "hardware"
        print(f"attested {state['evidence_kind']} ({label})")
        print(
            f"  policy {state['verdict']['policy']}: {'PASSED' if state['verdict']['passed'] else 'REJECTED'}"
        )
        print(f"  measurement {claims['measurement'][:32]}..., report_data {claims['report_data'][:32]}...")
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        code = "total = sum(range(1_000_001)); print('computed inside the simulated TEE:', total)"
        await kc.execute_interactive(code, timeout=60)
        kc.stop_channels()
    finally:
        await km.shutdown_kernel()

    print("\n== 9. The same kernel under the default policy is never started")
    km = AsyncKernelManager(kernel_name="cc-demo-default-policy")
    try:
        await km.start_kernel()
    except KernelRefusedError as exc:
        print(exc)
    else:
        await km.shutdown_kernel()
        print("demo: the default policy accepted simulated evidence", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["JUPYTER_PATH"] = tmp
        return asyncio.run(run(Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
