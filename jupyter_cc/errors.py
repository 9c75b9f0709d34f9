"""The one error base of jupyter-cc and its leaves, each named for the check that failed.

Every failure a user can meet is a :class:`CCError`. Its :meth:`CCError.diagnostics` is one
readable sentence (what was checked, what was expected, what was found, and what to do), which
the CLI, the notebook magics and the JupyterLab dialog show as is. Errors never carry secrets.

Exit status follows the ``verify`` contract: errors about the evidence or the policy verdict map
to 1, errors about the user's input (an unreadable file, a wrong option) map to 2.

The tree. The leaves above the act layer live here; each act and face leaf lives beside the
code that raises it (so its module needs no import from here beyond its parent)::

    CCError
    ├── InputError                                   the user's input (exit status 2)
    │   ├── jupyter_cc.seal.codecs.CodecError
    │   ├── jupyter_cc.hub.kubernetes.ConfidentialPodError
    │   └── jupyter_cc.azure.errors.UnsafeRequestError, jupyter_cc.azure.errors.AzureSdkMissingError
    ├── EvidenceError                                the evidence did not verify
    │   ├── FormatError, SignatureError, ChainError, BindingError, TcbError,
    │   │   CollateralError, FreshnessError
    │   ├── jupyter_cc.attest.nvidia_rim.MeasurementError   a GPU differs from NVIDIA's RIMs
    │   ├── jupyter_cc.guest.results.SourceUnavailableError
    │   ├── jupyter_cc.guest.protocol.AgentError
    │   └── jupyter_cc.guest.vtpm.ToolError
    ├── PolicyError                                  a policy file or a rule in it
    ├── jupyter_cc.remote.attestation.PolicyRejectedError
    ├── jupyter_cc.remote.ssh.SshError
    ├── jupyter_cc.provisioner.KernelRefusedError    (also tornado's HTTPError, for the dialog)
    ├── jupyter_cc.hub.spawner.SpawnRefusedError
    ├── jupyter_cc.guest.kernel.KernelError
    ├── jupyter_cc.guest.server.ServerError
    ├── jupyter_cc.guest.resident.ServiceError
    ├── jupyter_cc.guest.transport.TransportError        the agent transport (no sshd, in pods)
    ├── jupyter_cc.remote.pod.PodError                    a confidential pod that did not run
    ├── jupyter_cc.keys.KeyReleaseError
    │   └── jupyter_cc.keys.akv.release.AkvReleaseError
    ├── jupyter_cc.kbs.protocol.KbsError
    │   └── jupyter_cc.kbs.broker.RequestRefusedError
    ├── jupyter_cc.seal.envelope.SealError
    │   └── jupyter_cc.seal.envelope.UnsealError
    │       └── jupyter_cc.seal.envelope.EnvelopeFormatError, jupyter_cc.seal.envelope.WrongKeyError,
    │           jupyter_cc.seal.envelope.TamperedError
    ├── jupyter_cc.audit.AuditError
    ├── jupyter_cc.notebook.session.SessionError
    ├── jupyter_cc.notebook.declassify.PullRefusedError
    └── jupyter_cc.azure.errors.CloudError                  Azure Resource Manager and the CVM
        └── jupyter_cc.azure.errors.CredentialError, jupyter_cc.azure.errors.ArmError,
            jupyter_cc.azure.errors.ArmTimeoutError, jupyter_cc.azure.errors.NotAttestedError

Every leaf is named ``...Error``; ``tests/unit/test_error_tree.py`` keeps this map complete.

>>> try:
...     raise SignatureError("SNP report signature does not verify with the VCEK")
... except CCError as exc:
...     print(exc.diagnostics())
SNP report signature does not verify with the VCEK.
"""

from __future__ import annotations

__all__ = [
    "BindingError",
    "CCError",
    "ChainError",
    "CollateralError",
    "EvidenceError",
    "FormatError",
    "FreshnessError",
    "InputError",
    "PolicyError",
    "SignatureError",
    "TcbError",
]


class CCError(Exception):
    """Base of every jupyter-cc error.

    Args:
        message: what went wrong, expected and observed values included.
        hint: what the user can do about it, appended to the diagnostics.
        source: the file or field the problem is in, if one is known.
    """

    exit_status = 1
    check = "jupyter-cc"

    def __init__(self, message: str, *, hint: str | None = None, source: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.source = source

    def diagnostics(self) -> str:
        """One human sentence naming the place, the problem and the remedy."""
        text = self.message.rstrip(".")
        if self.source:
            text = f"{self.source}: {text}"
        if self.hint:
            text = f"{text}; {self.hint.rstrip('.')}"
        return text + "."

    def sentence(self) -> str:
        """The refusal as every face shows it: ``"<check> check failed: <diagnostics>"``."""
        return f"{self.check} check failed: {self.diagnostics()}"

    def __str__(self) -> str:
        return self.diagnostics()


class InputError(CCError):
    """The user's input could not be read: missing file, bad encoding, wrong option."""

    exit_status = 2
    check = "input"


class EvidenceError(CCError):
    """Evidence that is not genuine, fresh or well-formed (exit status 1)."""

    check = "evidence"


class FormatError(EvidenceError):
    """Bytes that do not have the layout of the evidence kind they were given as."""

    check = "format"


class SignatureError(EvidenceError):
    """A signature over evidence, collateral or a token does not verify."""

    check = "signature"


class ChainError(EvidenceError):
    """A certificate chain is incomplete, mis-signed, expired or not rooted at a pinned root."""

    check = "chain"


class BindingError(EvidenceError):
    """Two pieces of evidence that must be bound together are not (hashes, nonces, keys)."""

    check = "binding"


class TcbError(EvidenceError):
    """A TCB value disagrees with the one its certificate or collateral vouches for."""

    check = "tcb"


class CollateralError(EvidenceError):
    """TCB info, QE identity or CRLs are invalid, stale or do not match the evidence."""

    check = "collateral"


class FreshnessError(EvidenceError):
    """Evidence or a token is outside its validity window."""

    check = "freshness"


class PolicyError(CCError):
    """A policy file is malformed (exit 2) or rejects the claims (see policy.Verdict)."""

    exit_status = 2
    check = "policy"
