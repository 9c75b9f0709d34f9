"""``jupyter-cc seal`` and ``jupyter-cc unseal``: files in and out of sealed envelopes.

:func:`add_commands` adds both subcommands to the CLI's subparsers (``jupyter_cc.cli`` calls
it). Each command's ``func`` returns 0 on success and raises a :class:`~jupyter_cc.errors.CCError`
otherwise, which the CLI prints as one sentence: exit status 1 when an envelope does not
authenticate (the output is then not left behind), 2 for usage errors and unreadable input.

The key comes from ``--key-file F`` (exactly 32 raw bytes, in a file only its owner can read)
or ``--key-uri URI`` (released to this TEE by :func:`jupyter_cc.keys.release`).

    jupyter-cc seal results.parquet results.sealed --key-file data.key
    jupyter-cc unseal results.sealed results.parquet --key-uri kbs://127.0.0.1:8085/default/key/demo
"""

from __future__ import annotations

import argparse
import os
import re
import stat
from pathlib import Path
from typing import Any

from jupyter_cc.errors import InputError
from jupyter_cc.keys import fingerprint
from jupyter_cc.seal import seal_file, unseal_file
from jupyter_cc.seal.envelope import DEFAULT_CHUNK_SIZE, KEY_SIZE, MAX_KEY_ID, TAG_SIZE

__all__ = ["add_commands", "load_key"]

_SIZE = re.compile(r"^\s*(\d+)\s*(|k|kb|kib|m|mb|mib)\s*$", re.IGNORECASE)


def add_commands(sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``seal`` and ``unseal`` to the CLI's subparsers.

    ``parser_class`` is the CLI's one-sentence-error parser; the subparsers made here come from
    ``sub`` (which already uses it), and it is accepted so later nested commands can use it too.
    """
    del parser_class  # seal and unseal have no nested subcommands
    seal_p = sub.add_parser(
        "seal",
        help="seal a file into an AES-256-GCM envelope (docs/sealed-format.md)",
        description="Seal IN into the envelope file OUT under a 32-byte key; OUT appears only complete.",
    )
    seal_p.add_argument("input", metavar="IN", help="the file to seal")
    seal_p.add_argument("output", metavar="OUT", help="the envelope file to write")
    _add_key_options(seal_p)
    seal_p.add_argument(
        "--key-id",
        metavar="TEXT",
        help="the key name recorded in the (readable) header; default: the key id or fingerprint",
    )
    seal_p.add_argument(
        "--chunk-size",
        metavar="BYTES",
        type=_chunk_size,
        default=DEFAULT_CHUNK_SIZE,
        help="plaintext bytes per chunk, e.g. 1MiB (the default) or 65536; 16 bytes to 64 MiB",
    )
    seal_p.set_defaults(func=_cmd_seal)

    unseal_p = sub.add_parser(
        "unseal",
        help="authenticate and decrypt an envelope file",
        description=(
            "Unseal the envelope IN into OUT (mode 0600); exit status 1 and no OUT when it does "
            "not authenticate."
        ),
    )
    unseal_p.add_argument("input", metavar="IN", help="the envelope file")
    unseal_p.add_argument("output", metavar="OUT", help="where to write the plaintext")
    _add_key_options(unseal_p)
    unseal_p.set_defaults(func=_cmd_unseal)


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--key-file", metavar="F", help="a file of exactly 32 raw key bytes, mode 0600")
    group.add_argument(
        "--key-uri", metavar="URI", help="release the key: kbs://host[:port]/repo/type/tag or akv://..."
    )


def _chunk_size(text: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (like 65536 or 1MiB)")
    unit = match.group(2).lower()
    return int(match.group(1)) * (1 << 20 if unit.startswith("m") else 1 << 10 if unit else 1)


def load_key(args: argparse.Namespace) -> tuple[bytes, str | None]:
    """The key material and its name (a released key's id, or None for a key file).

    Raises:
        InputError: an unreadable, wrongly sized or group/other-readable key file, or a key URI
            without the key release module.
    """
    if args.key_uri:
        try:
            from jupyter_cc.keys import release
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("jupyter_cc"):
                raise InputError(
                    "key URIs need the key release module (jupyter_cc.keys), which this installation lacks",
                    hint="use --key-file instead",
                ) from None
            raise
        released = release(args.key_uri)
        material = bytes(released.material)
        if len(material) != KEY_SIZE:
            raise InputError(
                f"the key released from {args.key_uri} is {len(material)} bytes; sealing needs 32 (AES-256)"
            )
        name = getattr(released, "key_id", None)
        ok = isinstance(name, str) and 0 < len(name) <= MAX_KEY_ID and name.isascii() and name.isprintable()
        return material, name if ok else None
    return _read_key_file(Path(args.key_file)), None


def _read_key_file(path: Path) -> bytes:
    """Read a key file, refusing one that others can read: a leaked key file leaks every envelope."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise InputError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read key file {path} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"key file {path} is not a regular file")
        if os.name == "posix" and info.st_mode & 0o077:
            raise InputError(
                f"key file {path} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o})",
                hint=f"chmod 600 {path}",
            )
        data = fh.read(KEY_SIZE + 1)
    if len(data) != KEY_SIZE:
        size = f"{len(data)} bytes" if len(data) <= KEY_SIZE else "more than 32 bytes"
        raise InputError(
            f"key file {path} holds {size}; it must hold exactly 32 raw bytes",
            hint="make one with: head -c 32 /dev/urandom > F && chmod 600 F",
        )
    return data


def _cmd_seal(args: argparse.Namespace) -> int:
    key, name = load_key(args)
    key_id = args.key_id or name
    header = seal_file(args.input, args.output, key, key_id=key_id, chunk_size=args.chunk_size)
    sealed = os.stat(args.output).st_size
    chunks = max(1, -(-(sealed - header.size) // (header.chunk_size + TAG_SIZE)))
    plain = sealed - header.size - chunks * TAG_SIZE
    print(
        f"sealed {args.input} ({plain} bytes) to {args.output}: key id {header.key_id}, "
        f"fingerprint {fingerprint(key)}, {chunks} chunk{'s' if chunks != 1 else ''} "
        f"of up to {header.chunk_size} bytes"
    )
    return 0


def _cmd_unseal(args: argparse.Namespace) -> int:
    key, _ = load_key(args)
    header = unseal_file(args.input, args.output, key)
    size = os.stat(args.output).st_size
    print(
        f"unsealed {args.input} to {args.output} ({size} bytes, content {header.content_type.codec}, "
        f"sealed {header.to_json()['created']} under key id {header.key_id})"
    )
    return 0
