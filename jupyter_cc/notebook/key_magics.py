"""Notebook magics for keys and sealed data: ``%release_key``, ``%seal``, ``%unseal``.

Loaded with ``%load_ext jupyter_cc`` (and automatically in confidential kernels). Released keys
live only in this kernel's memory, in a :class:`KeyRing` whose repr shows key ids and
fingerprints, never material; nothing here prints or logs a key. Each magic prints one line on
success and one sentence on failure (no traceback).

>>> %release_key kbs://127.0.0.1:8085/demo/key/patients?cert-sha256=3f1c... --as patients  # doctest: +SKIP
>>> %seal summary --key patients --to summary.sealed                      # doctest: +SKIP
>>> %unseal summary.sealed --key patients --as restored                   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from jupyter_cc.errors import CCError
from jupyter_cc.notebook.args import MagicArgs, parse_line

if TYPE_CHECKING:
    from jupyter_cc.keys.kbs_client import KbsClient

__all__ = ["KeyMagics", "KeyRing"]


def _audit(event: str, **fields: Any) -> None:
    from jupyter_cc import audit

    audit.record(event, **fields)


class KeyRing:
    """Released keys by name, in kernel memory only."""

    def __init__(self) -> None:
        self._keys: dict[str, Any] = {}

    def __repr__(self) -> str:
        inside = ", ".join(f"{name}: {key!r}" for name, key in self._keys.items())
        return f"KeyRing({inside})"

    def put(self, name: str, key: Any) -> None:
        self._keys[name] = key

    def get(self, name: str) -> Any:
        try:
            return self._keys[name]
        except KeyError:
            known = ", ".join(sorted(self._keys)) or "none yet"
            raise UsageError(
                f"no released key named '{name}' in this kernel (released: {known}); "
                "run %release_key URI --as NAME first"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._keys)


def _default_name(uri: str) -> str:
    """The URI's last path segment (its ``?cert-sha256=`` pin is not part of the name)."""
    return uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "key"


@magics_class
class KeyMagics(Magics):
    """``%release_key``, ``%seal`` and ``%unseal``."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.keys = KeyRing()
        self._brokers: KbsClient | None = None

    @property
    def brokers(self) -> KbsClient:
        """This kernel's broker sessions: a second key from one broker is one request on the
        kept, authenticated connection with the kept attestation token (see KbsClient).

        Made at the first ``kbs://`` release: the client stack is not imported at kernel start.
        """
        if self._brokers is None:
            from jupyter_cc.keys.kbs_client import KbsClient

            self._brokers = KbsClient()
        return self._brokers

    @property
    def _ns(self) -> dict[str, Any]:
        assert self.shell is not None
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    @line_magic
    def release_key(self, line: str) -> None:
        """%release_key URI [--as NAME]: release a key to this attested kernel.

        URI is ``kbs://host[:port]/repo/type/tag?cert-sha256=HEX`` (HTTPS; the broker is
        authenticated by that certificate pin, a ``[brokers."host:port"]`` pin in
        jupyter_cc.toml, ``$JUPYTER_CC_KBS_CERT_SHA256``, a CA file or the system trust store;
        ``jupyter-cc kbs info`` on the broker prints the pin), ``kbs+http://`` to a loopback
        broker only, or ``akv://vault/keys/name``.
        """
        parser = MagicArgs("release_key")
        parser.add_argument("uri")
        parser.add_argument("--as", dest="name")
        args = parse_line(parser, line)
        from jupyter_cc.keys import release

        kbs = args.uri.split(":", 1)[0].lower() in ("kbs", "kbs+http")
        try:
            key = self.brokers.release(args.uri) if kbs else release(args.uri)
        except CCError as exc:
            raise UsageError(f"%release_key: {exc.sentence()}") from None
        name = args.name or _default_name(args.uri)
        self.keys.put(name, key)
        _audit("release", uri=args.uri, key_id=key.key_id, key_fingerprint=key.fingerprint, policy=key.policy)
        policy = getattr(key, "policy", None) or "the broker's policy"
        print(f"released key '{name}' (id {key.key_id}, fingerprint {key.fingerprint}) allowed by {policy}")

    @line_magic
    def seal(self, line: str) -> None:
        """%seal VAR --key NAME [--to PATH] [--unsafe-pickle] | %seal --file IN --key NAME --to OUT."""
        parser = MagicArgs("seal")
        parser.add_argument("var", nargs="?")
        parser.add_argument("--file", dest="file")
        parser.add_argument("--key", required=True)
        parser.add_argument("--to", dest="path")
        parser.add_argument("--unsafe-pickle", action="store_true")
        args = parse_line(parser, line)
        key = self.keys.get(args.key)
        from jupyter_cc.seal import seal_file, seal_value
        from jupyter_cc.seal.files import seal_value_to_file

        if args.file:
            if not args.path or args.var:
                raise UsageError("%seal: with --file IN give --to OUT and no variable name")
            try:
                seal_file(Path(args.file).expanduser(), Path(args.path).expanduser(), key.material)
            except CCError as exc:
                raise UsageError(f"%seal: {exc.diagnostics()}") from None
            size = Path(args.path).expanduser().stat().st_size
            _audit("seal", file=str(args.file), to=str(args.path), key_fingerprint=key.fingerprint, size=size)
            what = f"sealed file {args.file} with key '{args.key}' ({key.fingerprint})"
            print(f"{what}: {size} bytes to {args.path}")
            return
        if not args.var:
            raise UsageError("%seal: name a variable, or use --file IN --to OUT")
        if args.var not in self._ns:
            raise UsageError(f"%seal: there is no variable '{args.var}' in this kernel")
        value = self._ns[args.var]
        try:
            if args.path:
                # Straight to the file, one chunk in memory at a time; the file appears only whole.
                path = Path(args.path).expanduser()
                seal_value_to_file(value, path, key.material, unsafe_pickle=args.unsafe_pickle)
                size, where = path.stat().st_size, str(path)
            else:
                blob = seal_value(value, key.material, unsafe_pickle=args.unsafe_pickle)
                size, where = len(blob), f"variable {args.var}_sealed"
                self._ns[f"{args.var}_sealed"] = blob
        except CCError as exc:
            raise UsageError(f"%seal: {exc.diagnostics()}") from None
        _audit("seal", variable=args.var, to=where, key_fingerprint=key.fingerprint, size=size)
        print(f"sealed '{args.var}' with key '{args.key}' ({key.fingerprint}): {size} bytes to {where}")

    @line_magic
    def unseal(self, line: str) -> None:
        """%unseal PATH|VAR --key NAME [--as VAR | --to FILE] [--unsafe-pickle]: restore sealed data."""
        parser = MagicArgs("unseal")
        parser.add_argument("source")
        parser.add_argument("--key", required=True)
        parser.add_argument("--as", dest="name")
        parser.add_argument("--to", dest="path", help="write the plaintext to this file (streaming)")
        parser.add_argument("--unsafe-pickle", action="store_true")
        args = parse_line(parser, line)
        key = self.keys.get(args.key)
        if args.path:
            from jupyter_cc.seal import unseal_file

            try:
                unseal_file(Path(args.source).expanduser(), Path(args.path).expanduser(), key.material)
            except CCError as exc:
                raise UsageError(f"%unseal: {exc.diagnostics()}") from None
            _audit("unseal", source=str(args.source), to=str(args.path), key_fingerprint=key.fingerprint)
            print(f"unsealed {args.source} with key '{args.key}' to file {args.path}")
            return
        from jupyter_cc.seal import unseal_value
        from jupyter_cc.seal.files import unseal_value_from_file

        value = self._ns.get(args.source)
        try:
            if isinstance(value, (bytes, bytearray)):
                default = args.source.removesuffix("_sealed")
                restored = unseal_value(value, key.material, unsafe_pickle=args.unsafe_pickle)
            else:
                path = Path(args.source).expanduser()
                default = path.name.split(".")[0] or "unsealed"
                restored = unseal_value_from_file(path, key.material, unsafe_pickle=args.unsafe_pickle)
        except CCError as exc:
            raise UsageError(f"%unseal: {exc.diagnostics()}") from None
        name = args.name or default
        self._ns[name] = restored
        _audit("unseal", source=str(args.source), variable=name, key_fingerprint=key.fingerprint)
        print(f"unsealed {args.source} with key '{args.key}' into '{name}' ({type(restored).__name__})")
