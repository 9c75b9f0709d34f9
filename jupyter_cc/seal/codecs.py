"""Value <-> bytes codecs for sealed envelopes (docs/sealed-format.md section 6).

:func:`encode` picks a lossless codec for a value and returns its content type with a buffer
that, where it can, views the value's own memory (bytes, C-ordered NumPy arrays), so sealing a
large object does not copy it first. :func:`decode` maps authenticated plaintext back to a value.
Pickle is used only when the caller passes ``unsafe_pickle=True``, on both sides.

NumPy, pandas and pyarrow are imported only when a value of theirs is seen (or an envelope
names their codec), so sealing bytes does not pay their import time.

>>> ct, buf = encode({"rows": 3})
>>> ct.codec, bytes(buf)
('json', b'{"rows":3}')
>>> decode(ct, bytearray(buf))
{'rows': 3}
"""

from __future__ import annotations

import importlib
import json
import math
import pickle
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from jupyter_cc.decoding import strict_json
from jupyter_cc.errors import InputError

__all__ = ["CODECS", "Buffer", "CodecError", "ContentType", "decode", "encode"]

Buffer = Union[bytes, bytearray, memoryview]  # noqa: UP007 - a runtime alias, kept for Python 3.10
"""A bytes-like object: what :func:`encode` returns and the sealer reads from."""

CODECS = ("bytes", "str", "json", "numpy", "pandas-arrow", "pickle")

PICKLE_PROTOCOL = 5


class CodecError(InputError):
    """A value has no safe codec, or authenticated plaintext cannot become the value it names.

    Exit status 2: the remedy is the caller's (convert the value, install pyarrow, or opt in to
    pickle for a trusted source).
    """

    check = "codec"


@dataclass(frozen=True)
class ContentType:
    """Which codec made the plaintext, with its parameters (dtype, shape, ...), as in the header."""

    codec: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The header's ``content_type`` object."""
        return {"codec": self.codec, "params": dict(self.params)}

    @classmethod
    def from_json(cls, obj: Any) -> ContentType:
        """Parse a header's ``content_type``; raises :class:`ValueError` on a malformed one."""
        if not isinstance(obj, dict) or set(obj) != {"codec", "params"}:
            raise ValueError("content_type must be an object with exactly 'codec' and 'params'")
        codec, params = obj["codec"], obj["params"]
        if not isinstance(codec, str) or not codec or not isinstance(params, dict):
            raise ValueError("content_type codec must be a non-empty string and params an object")
        return cls(codec, params)


# -- encoding ---------------------------------------------------------------------------------


def encode(value: Any, *, unsafe_pickle: bool = False) -> tuple[ContentType, Buffer]:
    """Choose the codec for ``value`` and return its content type and plaintext buffer.

    Args:
        value: bytes-like, ``str``, a JSON value, a NumPy array or scalar, or a pandas
            DataFrame/Series; anything else only with ``unsafe_pickle``.
        unsafe_pickle: fall back to pickle for values no safe codec takes (object arrays,
            tuples, custom classes). The reader must opt in too.

    Raises:
        CodecError: no safe codec takes the value and ``unsafe_pickle`` is false, or pyarrow is
            missing for a pandas value.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _encode_bytes(value)
    if isinstance(value, str):
        return ContentType("str"), value.encode("utf-8", "surrogatepass")
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, (np.ndarray, np.generic)):
        if value.dtype.hasobject:
            return _pickle_or_refuse(value, unsafe_pickle, "a NumPy array of dtype object")
        return _encode_numpy(np, value)
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, (pd.DataFrame, pd.Series)):
        return _encode_pandas(value, unsafe_pickle)
    problem = _json_problem(value, depth=0)
    if problem is None:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return ContentType("json"), text.encode("utf-8", "surrogatepass")
    return _pickle_or_refuse(value, unsafe_pickle, problem)


def _encode_bytes(value: bytes | bytearray | memoryview) -> tuple[ContentType, Buffer]:
    if isinstance(value, memoryview):
        if not value.c_contiguous:
            return ContentType("bytes"), value.tobytes()
        return ContentType("bytes"), value.cast("B") if value.format != "B" or value.ndim != 1 else value
    if isinstance(value, bytearray):
        return ContentType("bytes", {"type": "bytearray"}), value
    return ContentType("bytes"), value


def _encode_numpy(np: Any, value: Any) -> tuple[ContentType, Buffer]:
    from numpy.lib.format import dtype_to_descr

    scalar = isinstance(value, np.generic)
    arr = np.asarray(value)
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # Fortran-ordered or strided input: one copy, in C order
    params: dict[str, Any] = {"dtype": dtype_to_descr(arr.dtype), "shape": list(arr.shape)}
    if scalar:
        params["scalar"] = True
    if arr.dtype.itemsize == 0 or arr.size == 0:
        return ContentType("numpy", params), b""
    flat = arr.reshape(-1).view(np.uint8)  # a view of the array's memory, no copy
    return ContentType("numpy", params), memoryview(flat)


def _encode_pandas(value: Any, unsafe_pickle: bool) -> tuple[ContentType, Buffer]:
    pd = sys.modules["pandas"]
    pa = _pyarrow("seal a pandas DataFrame or Series")
    if isinstance(value, pd.Series):
        name = value.name
        if name is not None and not isinstance(name, (str, int, float)):
            if unsafe_pickle:
                return _pickled(value)
            raise CodecError(
                f"a pandas Series named {name!r} cannot keep its name through Arrow",
                hint="rename it to a string or number, or pass unsafe_pickle=True for a trusted reader",
            )
        frame = value.to_frame(name="__series__")
        params: dict[str, Any] = {"kind": "Series", "name": name}
    else:
        frame = value
        params = {"kind": "DataFrame"}
    try:
        table = pa.Table.from_pandas(frame)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        buf = sink.getvalue()
    except (pa.ArrowException, TypeError, ValueError) as exc:
        if unsafe_pickle:
            return _pickled(value)
        raise CodecError(
            f"Arrow cannot encode this pandas {params['kind']} ({_first_line(exc)})",
            hint="convert mixed object columns to one type, or pass unsafe_pickle=True for a trusted reader",
        ) from None
    return ContentType("pandas-arrow", params), memoryview(buf)


def _pickled(value: Any) -> tuple[ContentType, Buffer]:
    try:
        data = pickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except Exception as exc:  # pickle raises many types (PicklingError, TypeError, AttributeError)
        raise CodecError(f"the {type(value).__name__} value cannot be pickled ({_first_line(exc)})") from None
    return ContentType("pickle", {"protocol": PICKLE_PROTOCOL}), data


def _pickle_or_refuse(value: Any, unsafe_pickle: bool, problem: str) -> tuple[ContentType, Buffer]:
    if unsafe_pickle:
        return _pickled(value)
    raise CodecError(
        f"{problem} has no safe codec (bytes, str, JSON, NumPy, pandas)",
        hint="convert it, or pass unsafe_pickle=True if only trusted code will unseal it",
    )


def _json_problem(value: Any, depth: int) -> str | None:
    """Why ``value`` would not round-trip through JSON exactly, or None if it would."""
    if depth > 500:
        return "a value nested more than 500 levels deep"
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"the float {value!r} (not valid JSON)"
    if type(value) is list:
        for item in value:
            problem = _json_problem(item, depth + 1)
            if problem:
                return problem
        return None
    if type(value) is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                return f"a dict key of type {type(key).__name__} (JSON keys are strings)"
            problem = _json_problem(item, depth + 1)
            if problem:
                return problem
        return None
    return f"a value of type {type(value).__name__}"


# -- decoding ---------------------------------------------------------------------------------


def decode(content_type: ContentType, data: bytearray, *, unsafe_pickle: bool = False) -> Any:
    """Turn authenticated plaintext back into the value its content type names.

    ``data`` is taken over where possible (a NumPy array decoded from it shares its memory and
    is writable), so the caller must not reuse it.

    Raises:
        CodecError: unknown codec, pickle without ``unsafe_pickle``, missing pyarrow, or
            plaintext that does not match its parameters.
    """
    codec, params = content_type.codec, content_type.params
    try:
        if codec == "bytes":
            return data if params.get("type") == "bytearray" else bytes(data)
        if codec == "str":
            return data.decode("utf-8", "surrogatepass")
        if codec == "json":
            return strict_json(data.decode("utf-8", "surrogatepass"))
        if codec == "numpy":
            return _decode_numpy(params, data)
        if codec == "pandas-arrow":
            return _decode_pandas(params, data)
    except CodecError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise CodecError(
            f"the sealed {codec} content does not decode ({_first_line(exc)})",
            hint="unseal_bytes still returns its raw bytes",
        ) from None
    if codec == "pickle":
        if not unsafe_pickle:
            raise CodecError(
                "this envelope holds a pickle, and unpickling runs whatever code its author put in it",
                hint="pass unsafe_pickle=True only if you trust whoever sealed it",
            )
        try:
            return pickle.loads(data)  # noqa: S301 - the caller opted in with unsafe_pickle=True
        except Exception as exc:  # unpickling raises anything the pickled code raises
            raise CodecError(f"the sealed pickle does not load ({_first_line(exc)})") from None
    raise CodecError(
        f"content type {codec!r} is not one this jupyter-cc knows ({', '.join(CODECS)})",
        hint="unseal_bytes still returns its raw bytes",
    )


def _decode_numpy(params: Mapping[str, Any], data: bytearray) -> Any:
    import numpy as np
    from numpy.lib.format import descr_to_dtype

    dtype = descr_to_dtype(_tuples(params["dtype"]))
    shape = params["shape"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError("the NumPy shape is not a list of non-negative integers")
    if dtype.hasobject:
        raise CodecError("the sealed NumPy dtype holds Python objects, which this codec never stores")
    count = math.prod(shape)
    if len(data) != count * dtype.itemsize:
        raise ValueError(
            f"{len(data)} bytes for {count} elements of {dtype.itemsize} bytes in shape {tuple(shape)}"
        )
    if dtype.itemsize == 0 or count == 0:
        arr = np.zeros(shape, dtype=dtype)
    else:
        arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    return arr[()] if params.get("scalar") else arr


def _tuples(descr: Any) -> Any:
    """JSON turned a structured dtype's tuples into lists; numpy wants them back.

    A descr is a type string or a list of fields ``[name, descr]`` or ``[name, descr, shape]``,
    where a name may be a ``[title, name]`` pair.
    """
    if not isinstance(descr, list):
        return descr
    fields = []
    for item in descr:
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise ValueError("a structured dtype field is not [name, type] or [name, type, shape]")
        name = tuple(item[0]) if isinstance(item[0], list) else item[0]
        rest = (tuple(item[2]),) if len(item) == 3 else ()
        fields.append((name, _tuples(item[1]), *rest))
    return fields


def _decode_pandas(params: Mapping[str, Any], data: bytearray) -> Any:
    pa = _pyarrow("unseal a pandas DataFrame or Series")
    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except pa.ArrowException as exc:
        raise ValueError(_first_line(exc)) from None
    frame = table.to_pandas()
    if params.get("kind") == "Series":
        series = frame["__series__"]
        series.name = params.get("name")
        return series
    return frame


def _pyarrow(what: str) -> Any:
    try:
        pa = importlib.import_module("pyarrow")
        importlib.import_module("pyarrow.ipc")  # makes pa.ipc available
    except ImportError:
        raise CodecError(
            f"to {what} jupyter-cc needs the pyarrow package, which is not installed",
            hint="pip install 'jupyter-cc[data]' (or pyarrow)",
        ) from None
    return pa


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__).rstrip(".")[:200]
