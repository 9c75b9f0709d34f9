"""CurveZMQ on a confidential kernel's ports, its server key bound to the attestation.

The kernelspec option ``transport_encryption`` (``off``, ``auto``, ``required``) asks the guest
agent to make the kernel's CurveZMQ key pair inside the TEE at ``attest``, bind its public key as
``curve-server-key`` into REPORT_DATA (design section 6) and, at ``start``, after the client's
verdict, put the pair in the kernel's connection file and send it back in the attested stream.
jupyter_client (8.10) uses the kernel's own pair on its client sockets and the public key as
``curve_serverkey``, so the secret has to reach the Jupyter server: it arrives only over the
attested channel, after the verdict, and is kept only in the connection info (its file is 0600
in the runtime dir), never on a command line or in a log.

:func:`client_keys` is the host's check: the public key received must be the one the evidence
bound, and the secret must be that key's secret; ``required`` refuses a kernel without them.
"""

from __future__ import annotations

import hmac

from jupyter_cc.errors import BindingError, InputError

__all__ = ["MODES", "client_keys", "mode", "require_bound", "wanted", "z85_bytes", "z85_public"]

#: The kernelspec's values (``disabled`` is jupyter_client's name for ``off``).
MODES = ("off", "disabled", "auto", "required")


def mode(value: str) -> str:
    """``off``, ``auto`` or ``required`` for a kernelspec value (case ignored)."""
    normalized = str(value).strip().lower()
    if normalized not in MODES:
        raise InputError(f"transport_encryption {value!r} is not one of off, auto, required")
    return "off" if normalized == "disabled" else normalized


def _host_has_curve() -> bool:
    import zmq

    return bool(zmq.has("curve"))


def wanted(value: str) -> bool:
    """Whether to ask the guest for a bound CurveZMQ key (off: no; auto: if this host can use it).

    Raises:
        InputError: ``required`` but this host's libzmq has no CURVE.
    """
    chosen = mode(value)
    if chosen == "off":
        return False
    if _host_has_curve():
        return True
    if chosen == "required":
        raise InputError(
            "transport_encryption is 'required' but this Jupyter server's libzmq has no CurveZMQ",
            hint="install a pyzmq wheel (it bundles libzmq with CURVE), or set transport_encryption to auto",
        )
    return False


def require_bound(value: str, bound: bytes | None) -> None:
    """Before ``start``: with ``required``, the accepted evidence must bind a CurveZMQ key, so a
    guest that cannot do CurveZMQ is refused before any kernel is started for it.

    Raises:
        BindingError: ``required`` and no key bound.
    """
    if bound is None and mode(value) == "required":
        raise BindingError(
            "transport_encryption is 'required' but the evidence binds no CurveZMQ server key",
            hint="the guest's jupyter-cc or libzmq has no CurveZMQ; upgrade it, or use auto",
        )


def client_keys(value: str, *, bound: bytes | None, remote: dict[str, object]) -> dict[str, str]:
    """The ``curve_publickey``/``curve_secretkey`` to put in the kernel's connection info, or {}.

    Args:
        value: the kernelspec's ``transport_encryption``.
        bound: the 32-byte public key the accepted evidence bound (None: it bound none).
        remote: the connection info the guest agent sent after the verdict.

    Raises:
        BindingError: the guest sent a key the evidence did not bind, or a secret that is not
            that key's, or (``required``) no bound key at all.
    """
    import zmq
    from zmq.utils import z85

    chosen = mode(value)
    public, secret = remote.get("curve_publickey"), remote.get("curve_secretkey")
    if chosen == "off" or bound is None:
        if chosen == "required":
            raise BindingError(
                "transport_encryption is 'required' but the evidence binds no CurveZMQ server key",
                hint="the guest's jupyter-cc or libzmq has no CurveZMQ; upgrade it, or use auto",
            )
        if public is not None and chosen != "off":
            raise BindingError("the guest sent a CurveZMQ key that the evidence does not bind")
        return {}
    if not isinstance(public, str) or not isinstance(secret, str) or len(public) != 40 or len(secret) != 40:
        raise BindingError("the evidence binds a CurveZMQ key but the guest sent no key pair for the kernel")
    try:
        matches = hmac.compare_digest(z85.decode(public.encode()), bound)
        pair = hmac.compare_digest(zmq.curve_public(secret.encode()), public.encode())
    except (ValueError, zmq.ZMQError):
        raise BindingError("the guest sent a CurveZMQ key pair that is not Z85") from None
    if not matches:
        raise BindingError(
            "the kernel's CurveZMQ public key is not the one the evidence binds",
            hint="something between the attestation and the kernel start swapped the key; do not continue",
        )
    if not pair:
        raise BindingError("the CurveZMQ secret key the guest sent does not belong to the bound public key")
    return {"curve_publickey": public, "curve_secretkey": secret}


def z85_public(bound: bytes | None) -> str:
    """The Z85 text of a bound 32-byte public key ("" for none), for the kernel's record."""
    if bound is None:
        return ""
    from zmq.utils import z85

    return z85.encode(bound).decode()


def z85_bytes(text: str) -> bytes | None:
    """The 32 bytes of a recorded Z85 public key (None for "")."""
    if not text:
        return None
    from zmq.utils import z85

    try:
        return z85.decode(text.encode())
    except ValueError:
        raise BindingError("the kernel's record holds a CurveZMQ key that is not Z85") from None
