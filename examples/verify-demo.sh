#!/usr/bin/env bash
# The evidence core on the embedded simulated TEE: mint evidence bound to a fresh nonce, verify
# it, and watch the policy and the verifier refuse what they must. SIMULATED — not a hardware TEE.
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }
expect() {  # expect STATUS command...: run it and check its exit status
    local want=$1; shift
    set +e; "$@"; local got=$?; set -e
    if [ "$got" != "$want" ]; then echo "demo: expected exit status $want, got $got" >&2; exit 1; fi
}

nonce=$(python3 -c 'import os; print(os.urandom(32).hex())')
report_data=$(python3 - "$nonce" <<'PY'
import hashlib, sys
nonce = bytes.fromhex(sys.argv[1])
print(hashlib.sha512(b"jupyter-cc/v1" + nonce + bytes(32)).hexdigest())
PY
)

step "1. The simulated TEE mints an SNP report binding a fresh nonce (local transport)"
jupyter-cc sim mint --report-data "$report_data" -o "$work/report.bin"

step "2. The default policy refuses simulated evidence (exit 1)"
expect 1 jupyter-cc verify sim-snp "$work/report.bin" --report-data "$report_data"

step "3. A policy that asks for the simulated TEE accepts it (exit 0)"
cat > "$work/policy.toml" <<'TOML'
name = "demo-simulated"
allow_simulated = true
[snp]
vmpl = 0
min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }
TOML
expect 0 jupyter-cc verify sim-snp "$work/report.bin" --policy "$work/policy.toml" --report-data "$report_data"

step "4. Replayed evidence: another nonce was expected (exit 1)"
expect 1 jupyter-cc verify sim-snp "$work/report.bin" --policy "$work/policy.toml" --report-data "$(python3 -c 'import os; print(os.urandom(64).hex())')"

step "5. One flipped bit in the signed part: the signature check fails (exit 1)"
python3 - "$work/report.bin" "$work/tampered.bin" <<'PY'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
data[0x90] ^= 0x01  # first byte of MEASUREMENT
open(sys.argv[2], "wb").write(data)
PY
expect 1 jupyter-cc verify sim-snp "$work/tampered.bin" --policy "$work/policy.toml"

step "6. Simulated evidence passed off as real SNP: its root is not a pinned AMD ARK (exit 1)"
expect 1 jupyter-cc verify snp "$work/report.bin" --vcek "$(python3 -c 'from jupyter_cc.paths import data_dir; print(data_dir() / "sim" / "vcek.pem")')" \
    --chain "$(python3 -c 'from jupyter_cc.paths import data_dir; print(data_dir() / "sim" / "ask_ark.pem")')" --policy "$work/policy.toml"

if [ -d ../shared/vectors ]; then
    step "7. Real evidence from an AMD Milan machine (public sample), verified to the pinned ARK"
    milan=(../shared/vectors/snp/milan-v2.report.hex --vcek ../shared/vectors/snp/milan-v2.vcek.der
        --chain ../shared/vectors/amd/ask_ark_milan.pem)
    echo "(no AMD CRL given: revocation is unchecked, which every policy refuses; exit 1)"
    expect 1 jupyter-cc verify snp "${milan[@]}"
    printf 'name = "unchecked-revocation-ok"\n[collateral]\nallow_unchecked_revocation = true\n' \
        > "$work/unchecked.toml"
    expect 0 jupyter-cc verify snp "${milan[@]}" --policy "$work/unchecked.toml"
fi

python3 "$(dirname "$0")/kernel_demo.py"

printf '\ndemo: every step behaved as expected.\n'
