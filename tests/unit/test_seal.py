"""Sealed envelopes: codecs, the byte format of docs/sealed-format.md, tampering, files, CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat
import struct
import sys
import tracemalloc
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_cc.cli import seal as seal_cli
from jupyter_cc.errors import CCError, InputError
from jupyter_cc.keys import fingerprint
from jupyter_cc.seal import seal_file, seal_value, unseal_file, unseal_value
from jupyter_cc.seal.codecs import CodecError, ContentType
from jupyter_cc.seal.envelope import (
    MAGIC,
    EnvelopeFormatError,
    TamperedError,
    UnsealError,
    WrongKeyError,
    seal_bytes,
    unseal_bytes,
)
from jupyter_cc.seal.files import peek_header, seal_value_to_file, unseal_value_from_file

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CHUNK = 64
TAG = 16


def header_size(blob: bytes | bytearray) -> int:
    return 14 + int(struct.unpack(">I", bytes(blob[10:14]))[0])


def chunk_span(blob: bytes | bytearray, index: int, chunk: int = CHUNK) -> tuple[int, int]:
    start = header_size(blob) + index * (chunk + TAG)
    return start, min(len(blob), start + chunk + TAG)


# -- codecs: round trips ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"x",
        b"abc" * 1000,
        "",
        "h\u00e9llo w\u00f6rld \u2603 \U0001f600",
        {"a": [1, 2.5, None, True, False, "s"], "nested": {"deep": [[], {}]}},
        [],
        0,
        -(10**30),
        3.25,
        None,
        True,
        "a string that is long " * 100,
    ],
    ids=repr,
)
def test_round_trip_plain_values(value: Any) -> None:
    blob = seal_value(value, KEY, chunk_size=CHUNK)
    out = unseal_value(blob, KEY)
    assert out == value
    assert type(out) is type(value)


def test_bytearray_and_memoryview_values() -> None:
    assert unseal_value(seal_value(bytearray(b"abc"), KEY), KEY) == bytearray(b"abc")
    assert type(unseal_value(seal_value(bytearray(b"abc"), KEY), KEY)) is bytearray
    ints = memoryview(np.arange(4, dtype="<u4").tobytes()).cast("I")
    assert unseal_value(seal_value(ints, KEY), KEY) == np.arange(4, dtype="<u4").tobytes()


ARRAYS = [
    np.arange(12.0).reshape(3, 4),
    np.arange(-5, 5, dtype=np.int8),
    np.arange(10, dtype=">u2"),
    np.array([True, False, True]),
    np.array([1 + 2j, 3 - 4j], dtype=np.complex128),
    np.array(["2024-01-01", "2026-11-27"], dtype="datetime64[ns]"),
    np.array(["ab", "c\u00e9d"], dtype="<U5"),
    np.array(3.5),
    np.array(7, dtype=np.int64),
    np.zeros((0, 3)),
    np.zeros((2, 0, 4), dtype=np.float32),
    np.asfortranarray(np.arange(24, dtype=np.int32).reshape(2, 3, 4)),
    np.arange(100, dtype=np.float64)[::3],
    np.array([(1, (2.0, 3.0)), (4, (5.0, 6.0))], dtype=[("a", "<i4"), ("b", "<f8", (2,))]),
    np.random.default_rng(1).random((50, 40)),
]


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype}-{a.shape}")
def test_round_trip_numpy(arr: np.ndarray) -> None:
    blob = seal_value(arr, KEY, chunk_size=CHUNK)
    assert b"pickle" not in bytes(blob[: header_size(blob)])
    out = unseal_value(blob, KEY)
    assert isinstance(out, np.ndarray)
    assert out.dtype == arr.dtype
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    assert out.flags.c_contiguous
    assert peek_header(blob).content_type.codec == "numpy"


def test_numpy_scalar_round_trip() -> None:
    for scalar in (np.float32(2.5), np.int16(-3), np.bool_(True), np.datetime64("2026-11-27")):
        out = unseal_value(seal_value(scalar, KEY), KEY)
        assert type(out) is type(scalar)
        assert out == scalar


def test_numpy_c_ordered_input_is_not_copied() -> None:
    arr = np.ones(4 << 20, dtype=np.uint8)  # 4 MiB
    tracemalloc.start()
    try:
        blob = seal_value(arr, KEY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the envelope itself and nothing else of the array's size
    assert peak < len(blob) + (1 << 20)


def test_numpy_object_dtype_needs_unsafe_pickle() -> None:
    arr = np.array([1, "two", None], dtype=object)
    with pytest.raises(CodecError, match="dtype object"):
        seal_value(arr, KEY)
    blob = seal_value(arr, KEY, unsafe_pickle=True)
    assert peek_header(blob).content_type.codec == "pickle"
    assert list(unseal_value(blob, KEY, unsafe_pickle=True)) == [1, "two", None]


def test_round_trip_dataframe_and_series() -> None:
    df = pd.DataFrame(
        {
            "id": np.arange(5, dtype=np.int64),
            "score": [0.5, 1.5, np.nan, 3.0, 4.25],
            "name": ["a", "b", "c", None, "e"],
            "when": pd.date_range("2026-01-01", periods=5, freq="D"),
            "cat": pd.Categorical(["x", "y", "x", "y", "x"]),
        },
        index=pd.Index([10, 20, 30, 40, 50], name="row"),
    )
    blob = seal_value(df, KEY, chunk_size=256)
    assert peek_header(blob).content_type.codec == "pandas-arrow"
    pd.testing.assert_frame_equal(unseal_value(blob, KEY), df)
    for series in (pd.Series([1, 2, 3], name="s"), pd.Series([1.5, None]), pd.Series(["a"], name=7)):
        pd.testing.assert_series_equal(unseal_value(seal_value(series, KEY), KEY), series)


def test_pandas_without_pyarrow_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = seal_value(pd.DataFrame({"a": [1]}), KEY)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(CodecError, match="pyarrow package"):
        seal_value(pd.DataFrame({"a": [1]}), KEY)
    with pytest.raises(CodecError, match="pyarrow package"):
        unseal_value(blob, KEY)


def test_pandas_mixed_object_column_is_refused_or_pickled() -> None:
    df = pd.DataFrame({"mixed": [1, "two", b"3"]})
    with pytest.raises(CodecError, match="Arrow cannot encode"):
        seal_value(df, KEY)
    blob = seal_value(df, KEY, unsafe_pickle=True)
    pd.testing.assert_frame_equal(unseal_value(blob, KEY, unsafe_pickle=True), df)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ((1, 2), "tuple"),
        ({1: "a"}, "dict key of type int"),
        ({"a": float("nan")}, "not valid JSON"),
        ({"s": {1, 2}}, "set"),
        (object(), "object"),
    ],
)
def test_values_without_a_lossless_codec_are_refused(value: Any, words: str) -> None:
    with pytest.raises(CodecError, match=words) as info:
        seal_value(value, KEY)
    assert info.value.exit_status == 2
    assert "unsafe_pickle=True" in str(info.value)


class Custom:
    def __init__(self, x: int) -> None:
        self.x = x


def test_pickle_only_with_the_flag_on_both_sides() -> None:
    with pytest.raises(CodecError, match="no safe codec"):
        seal_value(Custom(3), KEY)
    blob = seal_value(Custom(3), KEY, unsafe_pickle=True)
    with pytest.raises(CodecError, match="holds a pickle, and unpickling runs") as info:
        unseal_value(blob, KEY)
    assert str(info.value).count(".") >= 1 and "\n" not in str(info.value)
    assert unseal_value(blob, KEY, unsafe_pickle=True).x == 3
    # a safe value is never pickled, even with the flag
    assert peek_header(seal_value([1, 2], KEY, unsafe_pickle=True)).content_type.codec == "json"


def test_authenticated_plaintext_that_does_not_match_its_content_type() -> None:
    bad_shape = seal_bytes(b"abc", KEY, content_type=ContentType("numpy", {"dtype": "<f8", "shape": [2]}))
    with pytest.raises(CodecError, match="does not decode"):
        unseal_value(bad_shape, KEY)
    obj = seal_bytes(b"x" * 8, KEY, content_type=ContentType("numpy", {"dtype": "|O", "shape": [1]}))
    with pytest.raises(CodecError, match="Python objects"):
        unseal_value(obj, KEY)
    unknown = seal_bytes(b"abc", KEY, content_type=ContentType("zstd", {}))
    with pytest.raises(CodecError, match="'zstd' is not one"):
        unseal_value(unknown, KEY)
    assert unseal_bytes(unknown, KEY)[0] == b"abc"
    bad_utf8 = seal_bytes(b"\xff", KEY, content_type=ContentType("str"))
    with pytest.raises(CodecError):
        unseal_value(bad_utf8, KEY)


# -- the format -------------------------------------------------------------------------------


def test_format_matches_the_spec_with_an_independent_reader() -> None:
    """Decrypt with only the spec's primitives, not the module's code."""
    plaintext = os.urandom(3 * CHUNK + 10)
    blob = bytes(seal_bytes(plaintext, KEY, chunk_size=CHUNK, key_id="analyst/demo"))
    assert blob[:8] == b"\x89JCCSEAL" == MAGIC
    assert blob[8:10] == b"\x00\x01"
    hlen = struct.unpack(">I", blob[10:14])[0]
    text = blob[14 : 14 + hlen]
    header = json.loads(text)
    assert text == json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii")
    assert header["version"] == 1 and header["alg"] == "AES-256-GCM" and header["kdf"] == "HKDF-SHA256"
    assert header["key_id"] == "analyst/demo" and header["chunk_size"] == CHUNK
    assert header["content_type"] == {"codec": "bytes", "params": {}}
    created = datetime.strptime(header["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert abs(datetime.now(timezone.utc) - created) < timedelta(minutes=1)
    salt, prefix = bytes.fromhex(header["salt"]), bytes.fromhex(header["nonce_prefix"])

    def hkdf(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(KEY)

    assert hkdf(b"jupyter-cc sealed v1 key check").hex() == header["key_check"]
    aead = AESGCM(hkdf(b"jupyter-cc sealed v1 data key"))
    header_hash = hashlib.sha256(blob[: 14 + hlen]).digest()
    body = blob[14 + hlen :]
    assert len(body) == len(plaintext) + 4 * TAG
    out = b""
    for i in range(4):
        segment = body[i * (CHUNK + TAG) : (i + 1) * (CHUNK + TAG)]
        counter = i.to_bytes(4, "big")
        aad = header_hash + counter + (b"\x01" if i == 3 else b"\x00")
        out += aead.decrypt(prefix + counter, segment, aad)
    assert out == plaintext


@pytest.mark.parametrize(("size", "chunks"), [(0, 1), (1, 1), (CHUNK, 1), (CHUNK + 1, 2), (2 * CHUNK, 2)])
def test_chunk_count(size: int, chunks: int) -> None:
    blob = seal_bytes(b"\x07" * size, KEY, chunk_size=CHUNK)
    assert len(blob) == header_size(blob) + size + chunks * TAG
    assert unseal_bytes(blob, KEY)[0] == b"\x07" * size


def test_header_and_key_names() -> None:
    blob = seal_value("x", KEY)
    header = peek_header(blob)
    assert header.key_id == fingerprint(KEY) and len(header.key_id) == 32
    assert header.chunk_size == 1 << 20 and header.algorithm == "AES-256-GCM"
    assert header.content_type == ContentType("str", {})
    assert KEY.hex() not in repr(header) and header.salt.hex() not in repr(header)
    assert header.to_json()["content_type"] == {"codec": "str", "params": {}}
    # the default key id is the one fingerprint of docs/sealed-format.md, which releases show too
    label = b"jupyter-cc key fingerprint v1\x00"
    assert header.key_id == hashlib.sha256(label + KEY).hexdigest()[:32]


def test_every_envelope_has_fresh_salt_and_nonce_prefix() -> None:
    a, b = peek_header(seal_bytes(b"same", KEY)), peek_header(seal_bytes(b"same", KEY))
    assert a.salt != b.salt and a.nonce_prefix != b.nonce_prefix


@pytest.mark.parametrize("key", [b"", b"k" * 16, b"k" * 31, b"k" * 33, "k" * 32, None])
def test_keys_must_be_32_bytes(key: Any) -> None:
    with pytest.raises(InputError, match="32 bytes") as info:
        seal_bytes(b"x", key)
    assert info.value.exit_status == 2
    with pytest.raises(InputError, match="32 bytes"):
        unseal_bytes(seal_bytes(b"x", KEY), key)


@pytest.mark.parametrize("chunk_size", [0, 15, (64 << 20) + 1, True, 1.5])
def test_chunk_size_limits(chunk_size: Any) -> None:
    with pytest.raises(InputError, match="chunk size"):
        seal_bytes(b"x", KEY, chunk_size=chunk_size)


@pytest.mark.parametrize("key_id", ["", "x" * 201, "caf\u00e9", "tab\there"])
def test_key_id_limits(key_id: str) -> None:
    with pytest.raises(InputError, match="key id"):
        seal_bytes(b"x", KEY, key_id=key_id)


# -- tampering --------------------------------------------------------------------------------


PLAIN = bytes(range(256)) * 3 + b"tail"  # 772 bytes: 12 full chunks of 64 and one of 4
FULL = bytes(range(256))  # 4 full chunks, the final one full-sized


def sealed(data: bytes = PLAIN) -> bytes:
    return bytes(seal_bytes(data, KEY, chunk_size=CHUNK))


def flip(blob: bytes, pos: int, mask: int = 0x01) -> bytes:
    return blob[:pos] + bytes([blob[pos] ^ mask]) + blob[pos + 1 :]


def rewrite_header(blob: bytes, edit: Any) -> bytes:
    """Change the header JSON and fix its length, as an attacker would."""
    h = header_size(blob)
    obj = json.loads(blob[14:h])
    edit(obj)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return blob[:10] + struct.pack(">I", len(text)) + text + blob[h:]


def swap(blob: bytes, i: int, j: int) -> bytes:
    (a0, a1), (b0, b1) = chunk_span(blob, i), chunk_span(blob, j)
    assert a1 - a0 == b1 - b0 and a1 <= b0
    return blob[:a0] + blob[b0:b1] + blob[a1:b0] + blob[a0:a1] + blob[b1:]


def _content_type(obj: dict[str, Any]) -> None:
    obj["content_type"] = {"codec": "str", "params": {}}


def _created(obj: dict[str, Any]) -> None:
    obj["created"] = "2020-01-01T00:00:00Z"


def _key_id(obj: dict[str, Any]) -> None:
    obj["key_id"] = "someone-else"


def _chunk_size(obj: dict[str, Any]) -> None:
    obj["chunk_size"] = 128


def _salt(obj: dict[str, Any]) -> None:
    obj["salt"] = "00" * 32


def _extra(obj: dict[str, Any]) -> None:
    obj["note"] = "x"


def tampered_cases() -> list[tuple[str, bytes, type[UnsealError], str]]:
    blob, full = sealed(), sealed(FULL)
    h, last = header_size(blob), chunk_span(blob, 12)
    other = sealed()
    cases: list[tuple[str, bytes, type[UnsealError], str]] = [
        ("truncate at a chunk boundary", blob[: last[0]], TamperedError, "truncated"),
        ("drop the full-size last chunk", full[: chunk_span(full, 3)[0]], TamperedError, "truncated"),
        ("truncate mid-chunk", blob[: h + 5 * (CHUNK + TAG) + 30], TamperedError, "does not authenticate"),
        ("truncate inside the last tag", blob[:-3], TamperedError, "does not authenticate"),
        ("truncate to a stub", blob[: last[0] + 5], TamperedError, "truncated"),
        ("truncate the header", blob[: h - 4], EnvelopeFormatError, "truncated"),
        ("header only", blob[:h], TamperedError, "truncated"),
        ("swap two chunks", swap(blob, 2, 5), TamperedError, "chunk 2"),
        (
            "duplicate a chunk",
            blob[: chunk_span(blob, 4)[1]]
            + blob[slice(*chunk_span(blob, 4))]
            + blob[chunk_span(blob, 4)[1] :],
            TamperedError,
            "chunk 5",
        ),
        (
            "splice a chunk from another envelope",
            blob[:h] + other[h : h + 80] + blob[h + 80 :],
            TamperedError,
            "chunk 0",
        ),
        ("edit the content type", rewrite_header(blob, _content_type), TamperedError, "chunk 0"),
        ("edit the creation time", rewrite_header(blob, _created), TamperedError, "chunk 0"),
        ("edit the key id", rewrite_header(blob, _key_id), TamperedError, "chunk 0"),
        ("edit the chunk size", rewrite_header(blob, _chunk_size), TamperedError, "chunk 0"),
        ("edit the salt", rewrite_header(blob, _salt), WrongKeyError, "header was altered"),
        ("add a header member", rewrite_header(blob, _extra), EnvelopeFormatError, "unknown"),
        ("flip the magic", flip(blob, 0), EnvelopeFormatError, "magic"),
        ("flip the version", flip(blob, 9), EnvelopeFormatError, "version 0"),
        ("flip the header length", flip(blob, 12, 0x80), EnvelopeFormatError, "header"),
        ("flip a header byte", flip(blob, h - 2), EnvelopeFormatError, "malformed envelope header"),
        ("append one byte", blob + b"\x00", TamperedError, "does not authenticate"),
        ("append garbage", blob + os.urandom(200), TamperedError, "does not authenticate"),
        ("append to a full last chunk", full + b"garbage", TamperedError, "data was appended"),
        ("append a whole chunk", full + full[-(CHUNK + TAG) :], TamperedError, "data was appended"),
        ("empty input", b"", EnvelopeFormatError, "too short"),
        ("plain text", b"just some text, not an envelope", EnvelopeFormatError, "magic"),
    ]
    for i in range(13):
        start, end = chunk_span(blob, i)
        cases.append(
            (
                f"flip a bit in chunk {i}'s ciphertext",
                flip(blob, start + (end - start - TAG) // 2),
                TamperedError,
                f"chunk {i}",
            )
        )
        cases.append(
            (f"flip a bit in chunk {i}'s tag", flip(blob, end - 1, 0x80), TamperedError, f"chunk {i}")
        )
    # a header byte flip that keeps the JSON valid: a digit of the creation time
    pos = blob.index(b'"created":"') + len(b'"created":"') + 3
    cases.append(("flip a digit of the header", flip(blob, pos, 0x01), TamperedError, "chunk 0"))
    return cases


CASES = tampered_cases()


@pytest.mark.parametrize(("name", "blob", "error", "words"), CASES, ids=[c[0] for c in CASES])
def test_tampering_fails_in_memory(name: str, blob: bytes, error: type[UnsealError], words: str) -> None:
    with pytest.raises(error, match=words) as info:
        unseal_bytes(blob, KEY)
    assert info.value.exit_status == 1
    text = str(info.value)
    assert "\n" not in text and text.endswith(".")
    assert KEY.hex() not in text


@pytest.mark.parametrize(("name", "blob", "error", "words"), CASES, ids=[c[0] for c in CASES])
def test_tampering_fails_for_files_and_leaves_no_output(
    tmp_path: Path, name: str, blob: bytes, error: type[UnsealError], words: str
) -> None:
    src, dst = tmp_path / "in.sealed", tmp_path / "out.bin"
    src.write_bytes(blob)
    with pytest.raises(error, match=words):
        unseal_file(src, dst, KEY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.sealed"]
    with pytest.raises(error, match=words):
        unseal_value_from_file(src, KEY)
    dst.write_bytes(b"previous contents")
    with pytest.raises(error):
        unseal_file(src, dst, KEY)
    assert dst.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.sealed", "out.bin"]


def test_wrong_key(tmp_path: Path) -> None:
    blob = sealed()
    with pytest.raises(WrongKeyError, match=f"fingerprint {fingerprint(OTHER_KEY)}") as info:
        unseal_bytes(blob, OTHER_KEY)
    assert fingerprint(KEY) in str(info.value)  # the key id it was sealed under
    assert OTHER_KEY.hex() not in str(info.value) and KEY.hex() not in str(info.value)
    src = tmp_path / "in.sealed"
    src.write_bytes(blob)
    with pytest.raises(WrongKeyError):
        unseal_file(src, tmp_path / "out", OTHER_KEY)
    assert not (tmp_path / "out").exists()


# -- Hypothesis -------------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_cc_errors(data: bytes) -> None:
    for blob in (data, MAGIC + data, MAGIC + b"\x00\x01" + data):
        with pytest.raises(CCError):
            unseal_bytes(blob, KEY)


VALID = sealed()


@settings(max_examples=300)
@given(st.data())
def test_any_change_to_a_valid_envelope_fails(data: st.DataObject) -> None:
    blob = bytearray(VALID)
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    if kind == "flip":
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del blob[data.draw(st.integers(0, len(blob) - 1)) :]
    elif kind == "insert":
        pos = data.draw(st.integers(0, len(blob)))
        blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=100))
    else:
        pos = data.draw(st.integers(0, len(blob) - 1))
        del blob[pos : pos + data.draw(st.integers(1, 100))]
    with pytest.raises(UnsealError):
        unseal_bytes(blob, KEY)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000), st.integers(16, 300))
def test_random_data_round_trips(data: bytes, chunk_size: int) -> None:
    out, header = unseal_bytes(seal_bytes(data, KEY, chunk_size=chunk_size), KEY)
    assert out == data and header.chunk_size == chunk_size


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
        max_leaves=20,
    )
)
def test_random_json_values_round_trip(value: Any) -> None:
    assert unseal_value(seal_value(value, KEY, chunk_size=32), KEY) == value


# -- files ------------------------------------------------------------------------------------


def test_file_round_trip_multi_chunk_bit_exact(tmp_path: Path) -> None:
    data = os.urandom(5 * 4096 + 123)
    src, env, back = tmp_path / "data.bin", tmp_path / "data.sealed", tmp_path / "back.bin"
    src.write_bytes(data)
    header = seal_file(src, env, KEY, chunk_size=4096)
    assert header.content_type.codec == "bytes" and header.chunk_size == 4096
    assert env.stat().st_size == header.size + len(data) + 6 * TAG
    assert unseal_bytes(env.read_bytes(), KEY)[0] == data  # the file and memory paths agree
    unsealed = unseal_file(env, back, KEY)
    assert back.read_bytes() == data
    assert unsealed.raw == header.raw
    assert stat.S_IMODE(back.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "data.bin", "data.sealed"]


@pytest.mark.parametrize("size", [0, 1, 4096, 8192])
def test_file_edge_sizes(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "a").write_bytes(data)
    seal_file(tmp_path / "a", tmp_path / "b", KEY, chunk_size=4096)
    assert (tmp_path / "b").read_bytes() == bytes((tmp_path / "b").read_bytes())
    assert unseal_bytes((tmp_path / "b").read_bytes(), KEY)[0] == data
    unseal_file(tmp_path / "b", tmp_path / "c", KEY)
    assert (tmp_path / "c").read_bytes() == data


def test_value_to_file_and_back(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).random((300, 7))
    seal_value_to_file(arr, tmp_path / "arr.sealed", KEY, chunk_size=1000)
    np.testing.assert_array_equal(unseal_value_from_file(tmp_path / "arr.sealed", KEY), arr)
    assert unseal_value((tmp_path / "arr.sealed").read_bytes(), KEY).shape == (300, 7)
    seal_value_to_file(b"", tmp_path / "empty.sealed", KEY)
    assert unseal_value_from_file(tmp_path / "empty.sealed", KEY) == b""


def test_files_stream_in_constant_memory(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    with open(src, "wb") as fh:
        for _ in range(32):
            fh.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        seal_file(src, tmp_path / "big.sealed", KEY)
        _, peak_seal = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        unseal_file(tmp_path / "big.sealed", tmp_path / "big.out", KEY)
        _, peak_unseal = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_seal < 5 << 20 and peak_unseal < 5 << 20  # a few 1 MiB chunk buffers, not 32 MiB
    assert (tmp_path / "big.out").read_bytes() == src.read_bytes()


def test_file_usage_errors(tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_bytes(b"data")
    with pytest.raises(InputError, match="does not exist"):
        seal_file(tmp_path / "missing", tmp_path / "b", KEY)
    with pytest.raises(InputError, match="is the input file"):
        seal_file(src, src, KEY)
    with pytest.raises(InputError, match="is the input file"):
        seal_file(src, tmp_path / "." / "a", KEY)
    with pytest.raises(InputError, match="folder"):
        seal_file(src, tmp_path / "nope" / "b", KEY)
    with pytest.raises(InputError, match="is a directory"):
        seal_file(src, tmp_path, KEY)
    seal_file(src, tmp_path / "b", KEY)
    with pytest.raises(InputError, match="is the input file"):
        unseal_file(tmp_path / "b", tmp_path / "b", KEY)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "b")
    with pytest.raises(InputError, match="is the input file"):
        unseal_file(tmp_path / "b", link, KEY)
    assert src.read_bytes() == b"data"


# -- CLI --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise SystemExit(2)


def run_cli(*argv: str) -> int:
    parser = _Parser(prog="jupyter-cc")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    seal_cli.add_commands(sub, _Parser)
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(KEY)
    return path


def test_cli_round_trip(tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = os.urandom(70_000)
    (tmp_path / "in.bin").write_bytes(data)
    env, out = str(tmp_path / "in.sealed"), str(tmp_path / "out.bin")
    assert (
        run_cli("seal", str(tmp_path / "in.bin"), env, "--key-file", str(key_file), "--chunk-size", "16KiB")
        == 0
    )
    line = capsys.readouterr().out
    assert "(70000 bytes)" in line and "5 chunks of up to 16384 bytes" in line and KEY.hex() not in line
    assert peek_header(env).chunk_size == 16384 and peek_header(env).key_id == fingerprint(KEY)
    assert run_cli("unseal", env, out, "--key-file", str(key_file)) == 0
    assert "70000 bytes, content bytes" in capsys.readouterr().out
    assert Path(out).read_bytes() == data


def test_cli_authentication_failure_leaves_no_output(tmp_path: Path, key_file: Path) -> None:
    env = tmp_path / "x.sealed"
    env.write_bytes(flip(sealed(), len(sealed()) - 1))
    with pytest.raises(UnsealError) as info:
        run_cli("unseal", str(env), str(tmp_path / "x.out"), "--key-file", str(key_file))
    assert info.value.exit_status == 1
    assert not (tmp_path / "x.out").exists()


def test_cli_usage_errors(tmp_path: Path, key_file: Path) -> None:
    (tmp_path / "in").write_bytes(b"abc")
    with pytest.raises(SystemExit) as info:
        run_cli("seal", str(tmp_path / "in"), str(tmp_path / "out"))
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        run_cli("seal", "a", "b", "--key-file", str(key_file), "--key-uri", "kbs://h/r/t/x")
    with pytest.raises(SystemExit):
        run_cli("seal", "a", "b", "--key-file", str(key_file), "--chunk-size", "lots")
    with pytest.raises(InputError, match="is the input file") as err:
        run_cli("seal", str(tmp_path / "in"), str(tmp_path / "in"), "--key-file", str(key_file))
    assert err.value.exit_status == 2
    assert (tmp_path / "in").read_bytes() == b"abc"


@pytest.mark.parametrize(
    ("content", "mode", "words"),
    [
        (KEY[:31], 0o600, "holds 31 bytes"),
        (KEY + b"\n", 0o600, "more than 32 bytes"),
        (KEY, 0o644, "open to group or others"),
        (KEY, 0o640, "mode 0640"),
    ],
)
def test_cli_key_file_checks(tmp_path: Path, content: bytes, mode: int, words: str) -> None:
    key = tmp_path / "k"
    key.write_bytes(content)
    key.chmod(mode)
    (tmp_path / "in").write_bytes(b"abc")
    with pytest.raises(InputError, match=words) as info:
        run_cli("seal", str(tmp_path / "in"), str(tmp_path / "out"), "--key-file", str(key))
    assert info.value.exit_status == 2 and KEY.hex() not in str(info.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="does not exist"):
        run_cli("seal", str(tmp_path / "in"), str(tmp_path / "out"), "--key-file", str(tmp_path / "none"))


def test_cli_key_uri_without_the_release_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jupyter_cc.keys", None)
    (tmp_path / "in").write_bytes(b"abc")
    with pytest.raises(InputError, match="key URIs need the key release module"):
        run_cli("seal", str(tmp_path / "in"), str(tmp_path / "out"), "--key-uri", "kbs://127.0.0.1/a/b/c")


def test_cli_key_uri_uses_the_released_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("jupyter_cc.keys")
    uris: list[str] = []

    def release(uri: str) -> Any:
        uris.append(uri)
        return types.SimpleNamespace(material=KEY, key_id="default/key/demo")

    fake.release = release  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "jupyter_cc.keys", fake)
    (tmp_path / "in").write_bytes(b"released")
    uri = "kbs://127.0.0.1:8085/default/key/demo"
    assert run_cli("seal", str(tmp_path / "in"), str(tmp_path / "env"), "--key-uri", uri) == 0
    assert peek_header(tmp_path / "env").key_id == "default/key/demo"
    assert run_cli("unseal", str(tmp_path / "env"), str(tmp_path / "out"), "--key-uri", uri) == 0
    assert (tmp_path / "out").read_bytes() == b"released" and uris == [uri, uri]


def test_cli_through_main(tmp_path: Path, key_file: Path) -> None:
    from jupyter_cc import cli

    (tmp_path / "in").write_bytes(b"abc")
    env = str(tmp_path / "env")
    assert cli.main(["seal", str(tmp_path / "in"), env, "--key-file", str(key_file)]) == 0
    Path(env).write_bytes(flip(Path(env).read_bytes(), -1))
    assert cli.main(["unseal", env, str(tmp_path / "out"), "--key-file", str(key_file)]) == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as info:
        cli.main(["unseal", env, str(tmp_path / "out")])
    assert info.value.code == 2
