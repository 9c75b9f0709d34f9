"""Azure Key Vault Secure Key Release policies: parse one, and evaluate it against MAA claims.

Key Vault releases an exportable key only when the attestation token it is shown satisfies the
key's release policy (docs/attestation-formats.md section 4). The grammar, version 1.0.0::

    {"version": "1.0.0",
     "anyOf": [{"authority": "https://sharedeus2.eus2.attest.azure.net/",
                "allOf": [{"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"},
                          {"claim": "x-ms-isolation-tee.x-ms-compliance-status",
                           "equals": "azure-compliant-cvm"}]}]}

``anyOf`` and ``allOf`` nest; a leaf is ``{claim, equals}`` where ``claim`` is a dotted path into
the token's claims (resolved by :func:`jupyter_cc.attest.maa.claim_path`, so claim names that
contain dots work); each top-level branch names the MAA ``authority`` whose tokens it accepts
(the token's ``iss``, compared without a trailing slash).

This module does no I/O and decides nothing about the network: the fake Key Vault in the tests
uses it to answer as Key Vault would, and a client can use it to explain why a key was refused.
A denial lists every failed condition of every branch that could have applied, not just the
first, so the user sees everything to fix at once.

>>> policy = parse_release_policy(b'{"version": "1.0.0", "anyOf": [{"authority": "https://maa",'
...     b' "allOf": [{"claim": "x-ms-attestation-type", "equals": "sevsnpvm"}]}]}')
>>> evaluate(policy, {"iss": "https://maa/", "x-ms-attestation-type": "sevsnpvm"}).allowed
True
>>> print(evaluate(policy, {"iss": "https://maa", "x-ms-attestation-type": "tdxvm"}).reason)
claim x-ms-attestation-type is 'tdxvm', the policy requires 'sevsnpvm'
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jupyter_cc.attest.maa import claim_path
from jupyter_cc.decoding import b64decode_any, strict_json
from jupyter_cc.errors import PolicyError

__all__ = [
    "AllOf",
    "AnyOf",
    "Condition",
    "Decision",
    "ReleasePolicy",
    "decode_policy_data",
    "evaluate",
    "parse_release_policy",
]

# claim_path treats its own MISSING as "no default"; this marks an absent claim instead.
_ABSENT: Any = object()

VERSIONS = ("1.0.0",)
MAX_DEPTH = 16
MAX_NODES = 4096
MAX_POLICY_BYTES = 256 * 1024
# Values shown in a denial are claim values from a signed token (a TEE type, a flag, a digest),
# never the token itself; long ones are cut so a reason stays one readable sentence.
_SHOW_CHARS = 96


@dataclass(frozen=True)
class Condition:
    """A leaf: the claim at ``claim`` must equal ``equals``."""

    claim: str
    equals: Any


@dataclass(frozen=True)
class AnyOf:
    """At least one child must hold; ``authority`` (if set) must have issued the token."""

    children: tuple[Node, ...]
    authority: str | None = None


@dataclass(frozen=True)
class AllOf:
    """Every child must hold; ``authority`` (if set) must have issued the token."""

    children: tuple[Node, ...]
    authority: str | None = None


Node = Condition | AnyOf | AllOf


@dataclass(frozen=True)
class ReleasePolicy:
    """A parsed release policy: its grammar version and its root (always an ``anyOf``)."""

    version: str
    root: AnyOf

    @property
    def authorities(self) -> tuple[str, ...]:
        """The authorities the top-level branches name, in order, without repeats."""
        seen: dict[str, None] = {}
        for branch in self.root.children:
            if isinstance(branch, (AnyOf, AllOf)) and branch.authority:
                seen.setdefault(branch.authority, None)
        return tuple(seen)


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`evaluate`.

    Attributes:
        allowed: True when some branch is satisfied.
        authority: the authority of the branch that allowed the release (None when denied).
        failures: when denied, one clause per failed condition of each branch that applied
            (or one clause saying that no branch names the token's issuer).
    """

    allowed: bool
    authority: str | None = None
    failures: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """The failures as one sentence without a final period (empty when allowed)."""
        return "; ".join(self.failures)


# --- parsing ---------------------------------------------------------------------------------


def decode_policy_data(data: str) -> bytes:
    """The policy JSON from a key's ``release_policy.data`` (base64url, usually unpadded)."""
    return b64decode_any(data, what="the release policy data")


def parse_release_policy(data: bytes | str | Mapping[str, Any]) -> ReleasePolicy:
    """Parse a release policy from its JSON text (or an already decoded object).

    Raises:
        PolicyError: the text is not JSON, the version is unknown, a node is neither
            ``anyOf``/``allOf`` nor ``{claim, equals}``, an ``anyOf``/``allOf`` is empty, a
            top-level branch names no authority, or the policy is deeper or larger than the
            limits (16 levels, 4096 nodes).
    """
    if isinstance(data, Mapping):
        doc: Any = data
    else:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        if len(raw) > MAX_POLICY_BYTES:
            raise PolicyError(f"the release policy is {len(raw)} bytes, more than {MAX_POLICY_BYTES}")
        try:
            doc = strict_json(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise PolicyError(f"the release policy is not JSON ({exc})") from None
    if not isinstance(doc, Mapping):
        raise PolicyError("the release policy is JSON but not an object")
    version = doc.get("version", "1.0.0")
    if version not in VERSIONS:
        raise PolicyError(
            f"the release policy has version {version!r}; only {', '.join(VERSIONS)} is understood",
        )
    unknown = sorted(set(doc) - {"version", "anyOf", "allOf", "authority"})
    if unknown:
        raise PolicyError(f"the release policy has unknown members {unknown}")
    counter = [0]
    root = _node({k: v for k, v in doc.items() if k != "version"}, "policy", 0, counter)
    if isinstance(root, Condition):
        raise PolicyError("the release policy's top level must be anyOf or allOf, not a single claim")
    if isinstance(root, AllOf):
        root = AnyOf((root,))
    for i, branch in enumerate(root.children):
        if isinstance(branch, Condition) or not (branch.authority or root.authority):
            raise PolicyError(
                f"branch {i} of the release policy names no authority",
                hint="every top-level branch must name the MAA instance whose tokens it accepts",
            )
    if root.authority:
        # An authority on the root applies to every branch that does not name its own.
        root = AnyOf(
            tuple(
                b if isinstance(b, Condition) or b.authority else type(b)(b.children, root.authority)
                for b in root.children
            )
        )
    return ReleasePolicy(version=version, root=root)


def _node(value: Any, where: str, depth: int, counter: list[int]) -> Node:
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise PolicyError(f"the release policy has more than {MAX_NODES} nodes")
    if depth > MAX_DEPTH:
        raise PolicyError(f"the release policy nests deeper than {MAX_DEPTH} levels at {where}")
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where} of the release policy is not an object")
    keys = set(value)
    if "claim" in keys:
        if keys != {"claim", "equals"}:
            raise PolicyError(
                f"{where} of the release policy must be exactly {{claim, equals}}, found {sorted(keys)}"
            )
        claim = value["claim"]
        if not isinstance(claim, str) or not claim:
            raise PolicyError(f"{where}.claim of the release policy is not a claim name")
        equals = value["equals"]
        if isinstance(equals, (Mapping, list)) or equals is None:
            raise PolicyError(f"{where}.equals of the release policy must be a string, number or boolean")
        return Condition(claim, equals)
    combinators = keys & {"anyOf", "allOf"}
    if len(combinators) != 1 or keys - {"anyOf", "allOf", "authority"}:
        raise PolicyError(
            f"{where} of the release policy must hold one of anyOf, allOf or claim "
            f"(with an optional authority), found {sorted(keys)}"
        )
    (name,) = combinators
    children = value[name]
    if not isinstance(children, list) or not children:
        raise PolicyError(f"{where}.{name} of the release policy must be a non-empty list")
    authority = value.get("authority")
    if authority is not None and (not isinstance(authority, str) or not authority.startswith("https://")):
        raise PolicyError(f"{where}.authority of the release policy is not an https URL")
    parsed = tuple(_node(c, f"{where}.{name}[{i}]", depth + 1, counter) for i, c in enumerate(children))
    return AnyOf(parsed, authority) if name == "anyOf" else AllOf(parsed, authority)


# --- evaluation ------------------------------------------------------------------------------


def _same_authority(authority: str, issuer: Any) -> bool:
    if not isinstance(issuer, str):
        return False
    a, b = authority.rstrip("/"), issuer.rstrip("/")
    # Scheme and host are case-insensitive; compare the path exactly.
    scheme_a, _, rest_a = a.partition("://")
    scheme_b, _, rest_b = b.partition("://")
    host_a, _, path_a = rest_a.partition("/")
    host_b, _, path_b = rest_b.partition("/")
    return (scheme_a.lower(), host_a.lower(), path_a) == (scheme_b.lower(), host_b.lower(), path_b)


def _matches(found: Any, wanted: Any) -> bool:
    """Whether a claim value satisfies ``equals``.

    Same-typed values compare exactly (strings case-sensitively). Booleans and numbers also
    match their JSON text, because policies are often written with string values throughout
    (the confidential sidecar's policy type declares ``equals`` as a string):
    ``"equals": "false"`` matches the claim ``false``. A boolean never equals a number.
    """
    if isinstance(found, bool) or isinstance(wanted, bool):
        if isinstance(found, bool) and isinstance(wanted, bool):
            return found is wanted
        if isinstance(found, bool) and isinstance(wanted, str):
            return wanted == ("true" if found else "false")
        return False
    if isinstance(found, str) and isinstance(wanted, str):
        return found == wanted
    if isinstance(found, (int, float)) and isinstance(wanted, (int, float)):
        return math.isfinite(found) and found == wanted
    if isinstance(found, (int, float)) and isinstance(wanted, str):
        return wanted == json.dumps(found)
    return False


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= _SHOW_CHARS else value[: _SHOW_CHARS - 3] + "..."
        return repr(text)
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, Sequence):
        return "a list"
    return "null" if value is None else type(value).__name__


def _check(node: Node, claims: Mapping[str, Any]) -> list[str]:
    """The failures of ``node`` (empty when it holds), ignoring authorities below the top."""
    if isinstance(node, Condition):
        found = claim_path(claims, node.claim, _ABSENT)
        if found is _ABSENT:
            return [f"claim {node.claim} is absent, the policy requires {_show(node.equals)}"]
        if _matches(found, node.equals):
            return []
        return [f"claim {node.claim} is {_show(found)}, the policy requires {_show(node.equals)}"]
    if node.authority is not None and not _same_authority(node.authority, claims.get("iss")):
        return [f"the token's issuer is not {node.authority}"]
    results = [_check(child, claims) for child in node.children]
    if isinstance(node, AllOf):
        return [f for r in results for f in r]
    if any(not r for r in results):
        return []
    if len(results) == 1:
        return results[0]
    leaves = [c for c in node.children if isinstance(c, Condition)]
    if len(leaves) == len(node.children) and len({c.claim for c in leaves}) == 1:
        found = claim_path(claims, leaves[0].claim, _ABSENT)
        shown = "is absent" if found is _ABSENT else f"is {_show(found)}"
        wanted = " or ".join(_show(c.equals) for c in leaves)
        return [f"claim {leaves[0].claim} {shown}, the policy requires {wanted}"]
    return ["none of: " + " | ".join(", ".join(r) for r in results)]


def evaluate(policy: ReleasePolicy, claims: Mapping[str, Any]) -> Decision:
    """Whether ``claims`` (a verified MAA token's payload) satisfy ``policy``.

    A top-level branch applies only to tokens its authority issued (the ``iss`` claim). The
    policy allows the release when some applicable branch holds. When none does, the decision
    lists the failed conditions of every applicable branch; when no branch applies, it says
    which issuer the token has and which authorities the policy accepts.
    """
    issuer = claims.get("iss")
    applicable: list[Node] = []
    for branch in policy.root.children:
        assert not isinstance(branch, Condition)  # parse_release_policy guarantees it
        if branch.authority is None or _same_authority(branch.authority, issuer):
            applicable.append(branch)
    if not applicable:
        shown = _show(issuer) if issuer is not None else "absent"
        names = policy.authorities
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return Decision(
            allowed=False,
            failures=(
                f"the token's issuer (iss) is {shown}, but the policy accepts only tokens from {listed}",
            ),
        )
    failures: list[str] = []
    for branch in applicable:
        assert not isinstance(branch, Condition)
        branch_failures = _check(type(branch)(branch.children), claims)
        if not branch_failures:
            return Decision(allowed=True, authority=branch.authority)
        failures.extend(f for f in branch_failures if f not in failures)
    return Decision(allowed=False, failures=tuple(failures))
