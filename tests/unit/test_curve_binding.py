"""The host's check of the CurveZMQ key pair a guest sends after the verdict."""

from __future__ import annotations

import pytest
import zmq
from zmq.utils import z85

from jupyter_cc.errors import BindingError, InputError
from jupyter_cc.remote import curve


def pair() -> tuple[str, str, bytes]:
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode(), z85.decode(public)


def test_the_bound_pair_is_returned_for_the_connection_info() -> None:
    public, secret, bound = pair()
    keys = curve.client_keys(
        "required", bound=bound, remote={"curve_publickey": public, "curve_secretkey": secret}
    )
    assert keys == {"curve_publickey": public, "curve_secretkey": secret}
    assert curve.z85_bytes(curve.z85_public(bound)) == bound


def test_a_key_the_evidence_did_not_bind_is_refused() -> None:
    public, secret, _ = pair()
    _, _, other = pair()
    with pytest.raises(BindingError, match="not the one the evidence binds"):
        curve.client_keys("auto", bound=other, remote={"curve_publickey": public, "curve_secretkey": secret})


def test_a_secret_of_another_key_is_refused() -> None:
    public, _, bound = pair()
    _, other_secret, _ = pair()
    with pytest.raises(BindingError, match="does not belong"):
        curve.client_keys(
            "auto", bound=bound, remote={"curve_publickey": public, "curve_secretkey": other_secret}
        )


def test_required_without_a_bound_key_is_refused_and_auto_goes_without() -> None:
    with pytest.raises(BindingError, match="binds no CurveZMQ"):
        curve.client_keys("required", bound=None, remote={})
    with pytest.raises(BindingError, match="binds no CurveZMQ"):
        curve.require_bound("required", None)
    curve.require_bound("auto", None)
    curve.require_bound("required", b"k" * 32)
    assert curve.client_keys("auto", bound=None, remote={}) == {}
    assert curve.client_keys("off", bound=None, remote={}) == {}
    public, secret, _ = pair()
    with pytest.raises(BindingError, match="does not bind"):
        curve.client_keys("auto", bound=None, remote={"curve_publickey": public, "curve_secretkey": secret})


def test_modes_and_secrets_never_in_messages() -> None:
    assert curve.mode("Disabled") == "off" and curve.mode("AUTO") == "auto"
    with pytest.raises(InputError):
        curve.mode("sometimes")
    assert curve.wanted("off") is False and curve.wanted("required") is True
    public, secret, _ = pair()
    _, _, other = pair()
    with pytest.raises(BindingError) as info:
        curve.client_keys("auto", bound=other, remote={"curve_publickey": public, "curve_secretkey": secret})
    assert secret not in info.value.diagnostics()
