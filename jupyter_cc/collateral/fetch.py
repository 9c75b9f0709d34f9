"""Getting a URL from a vendor service: the fetcher protocol, the urllib3 default, retries.

A :class:`Fetcher` is anything with ``get(url, timeout=...)`` returning a :class:`Response`
(status, lower-case headers, body); it raises :class:`TimeoutError` when the service is too
slow and :class:`ConnectionError` when it cannot be reached. Tests inject their own; the
default, :class:`Urllib3Fetcher`, verifies TLS against the system's CA store and follows no
redirects.

:class:`Client` adds what every service needs on top: retries with exponential backoff for
connection failures, timeouts and 5xx answers, and 429 handled by waiting the ``Retry-After``
the service names (bounded). Every failure becomes one
:class:`~jupyter_cc.errors.CollateralError` sentence naming the service, what was wanted and
what to do.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from jupyter_cc.errors import CollateralError

__all__ = ["MAX_BODY", "Client", "Fetcher", "Response", "Urllib3Fetcher", "offline_hint"]

MAX_BODY = 8 * 1024 * 1024


def offline_hint() -> str:
    """What to do when a vendor service cannot help: the air-gapped route."""
    return (
        "check the network and the service URL setting, or bring the collateral from a machine "
        "that can reach it ('jupyter-cc collateral export FILE' there, 'jupyter-cc collateral "
        "import FILE' here) and verify with --offline"
    )


@dataclass(frozen=True)
class Response:
    """One HTTP answer: status, headers (keys lower-case) and the body."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class Fetcher(Protocol):
    """GET a URL. Raises TimeoutError (too slow) or ConnectionError (unreachable)."""

    def get(self, url: str, *, timeout: float) -> Response: ...


class Urllib3Fetcher:
    """The default fetcher: urllib3 with TLS verification, no redirects, a bounded body."""

    def __init__(self) -> None:
        import urllib3

        self._pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", retries=False)

    def get(self, url: str, *, timeout: float) -> Response:
        return self._request("GET", url, timeout, None, {})

    def post(self, url: str, body: bytes, *, timeout: float, content_type: str) -> Response:
        """POST ``body`` (OCSP requests to NVIDIA's responder); same rules as :meth:`get`."""
        return self._request("POST", url, timeout, body, {"Content-Type": content_type})

    def _request(
        self, method: str, url: str, timeout: float, body: bytes | None, headers: Mapping[str, str]
    ) -> Response:
        import urllib3

        try:
            answer = self._pool.request(
                method,
                url,
                body=body,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
                retries=False,
                redirect=False,
                preload_content=False,
                headers={"Accept": "*/*", "User-Agent": "jupyter-cc", **headers},
            )
            try:
                body = answer.read(MAX_BODY + 1)
            finally:
                answer.release_conn()
        except urllib3.exceptions.NewConnectionError as exc:  # a ConnectTimeoutError subclass
            raise ConnectionError(_reason(exc)) from exc
        except urllib3.exceptions.TimeoutError as exc:
            raise TimeoutError(f"no answer within {timeout:g} s") from exc
        except urllib3.exceptions.SSLError as exc:
            raise ConnectionError(f"TLS verification failed ({exc})") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectionError(_reason(exc)) from exc
        headers = {k.lower(): v for k, v in answer.headers.items()}
        return Response(status=answer.status, headers=headers, body=body)


def _reason(exc: BaseException) -> str:
    inner = getattr(exc, "reason", None) or exc
    text = str(inner)
    return text.split(": ", 1)[-1] if ": " in text else text


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit also takes "²" and other digits
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


@dataclass
class Client:
    """A fetcher with retries, backoff, bounded ``Retry-After`` waits and worded failures.

    Args:
        fetcher: what does the GET (default :class:`Urllib3Fetcher`).
        timeout: seconds for connecting and for each read.
        attempts: tries in all for one URL.
        backoff: the first wait between tries, doubled each time.
        max_retry_after: the longest ``Retry-After`` honoured; a longer one fails at once.
        sleep: how to wait (tests pass a recorder).
    """

    fetcher: Fetcher | None = None
    timeout: float = 10.0
    attempts: int = 3
    backoff: float = 0.5
    max_retry_after: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.fetcher is None:
            self.fetcher = Urllib3Fetcher()

    def get(self, url: str, *, service: str, what: str) -> Response:
        """The 200 answer for ``url``; ``service`` and ``what`` word every failure.

        Raises:
            CollateralError: unreachable, too slow, 404, rate-limited, any other status, or a
                body larger than :data:`MAX_BODY`, after the retries.
        """
        assert self.fetcher is not None
        problem = ""
        for attempt in range(self.attempts):
            wait = self.backoff * (2**attempt)
            try:
                answer = self.fetcher.get(url, timeout=self.timeout)
            except TimeoutError as exc:
                problem = f"did not answer in time ({exc or f'{self.timeout:g} s'})"
            except (ConnectionError, OSError) as exc:
                problem = f"could not be reached ({exc})"
            else:
                if answer.status == 200:
                    return self._checked(answer, url, service, what)
                problem, wait = self._judge(answer, url, service, what, wait)
            if attempt + 1 < self.attempts:
                self.sleep(wait)
        raise CollateralError(
            f"{service} {problem} when asked for the {what} ({url}, {self.attempts} tries)",
            hint=offline_hint(),
        )

    def _checked(self, answer: Response, url: str, service: str, what: str) -> Response:
        if len(answer.body) > MAX_BODY:
            raise CollateralError(
                f"{service} answered {url} with more than {MAX_BODY} bytes for the {what}",
                hint=offline_hint(),
            )
        return answer

    def _judge(self, answer: Response, url: str, service: str, what: str, wait: float) -> tuple[str, float]:
        """(problem, wait) for a retryable status; raises at once for a final one."""
        status = answer.status
        if status == 404:
            raise CollateralError(
                f"{service} has no {what} ({url} answered 404 Not Found)",
                hint="check that the evidence comes from a genuine platform of that vendor; "
                + offline_hint(),
            )
        if status == 429:
            asked = _retry_after(answer.header("Retry-After"))
            if asked is not None and asked > self.max_retry_after:
                raise CollateralError(
                    f"{service} rate-limits us (429) when asked for the {what} and asks to retry "
                    f"after {asked:g} s, longer than the {self.max_retry_after:g} s we wait",
                    hint="try again later; " + offline_hint(),
                )
            return "kept answering 429 Too Many Requests", wait if asked is None else asked
        if status >= 500:
            return f"answered {status}", wait
        raise CollateralError(
            f"{service} answered {status} when asked for the {what} ({url})", hint=offline_hint()
        )
