"""What can go wrong with a confidential VM in Azure, one class per kind of failure.

Each error is one sentence naming the Azure resource and what to do about it. Messages carry
resource names and Azure's own error code and message, never a token or a key.
"""

from __future__ import annotations

from jupyter_cc.errors import CCError, InputError

__all__ = [
    "ArmError",
    "ArmTimeoutError",
    "AzureSdkMissingError",
    "CloudError",
    "CredentialError",
    "NotAttestedError",
    "UnsafeRequestError",
]


class CloudError(CCError):
    """Base of the failures met while talking to Azure Resource Manager (ARM)."""

    check = "azure"


class CredentialError(CloudError):
    """No Azure credential could be found, or it was refused when asked for a token."""

    check = "azure credential"


class ArmError(CloudError):
    """ARM refused a request (``code`` is Azure's error code, e.g. ``SkuNotAvailable``).

    Args:
        code: Azure's error code; ``""`` when the response had none.
        status: the HTTP status of the refusal (0 when the request never got an answer).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        status: int = 0,
        hint: str | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, source=source)
        self.code = code
        self.status = status


class ArmTimeoutError(CloudError):
    """A long-running ARM operation did not finish in the time allowed."""


class NotAttestedError(CloudError):
    """The CVM runs but did not prove, by attestation, that it is the confidential VM it should be."""

    check = "attestation"


class UnsafeRequestError(InputError):
    """A VM request that would not be a confidential, encrypted VM; nothing was sent to Azure."""

    check = "azure request"


class AzureSdkMissingError(InputError):
    """The Azure SDK (the ``jupyter-cc[azure]`` extra) is not installed."""
