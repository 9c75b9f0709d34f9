"""Per-user profiles of :class:`~jupyter_cc.hub.spawner.AttestedSSHSpawner`: the choice and its form.

``c.AttestedSSHSpawner.profile_list`` lists entries like ``{slug, display_name, default, policy,
remote_hosts, tee, ...}`` (or is a callable returning them). :func:`options_form` renders the
Hub's spawn form from them and :func:`apply_profile` (the spawner's ``apply_user_options``) sets
the chosen entry's traits, so one Hub can offer, say, a strict hardware-only policy next to a
demo one.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tornado import web

if TYPE_CHECKING:
    from jupyter_cc.hub.spawner import AttestedSSHSpawner

__all__ = ["PROFILE_KEYS", "apply_profile", "options_form"]

# Traits a profile_list entry may set: where to run and how to judge it, nothing else.
PROFILE_KEYS = ("policy", "remote_hosts", "tee", "ssh_user", "remote_python", "host_key_file")


async def _profiles(spawner: AttestedSSHSpawner) -> list[dict[str, Any]]:
    """The spawner's ``profile_list``, called (and awaited) first when it is a callable."""
    profiles = spawner.profile_list
    if callable(profiles):
        profiles = profiles(spawner)
        if asyncio.iscoroutine(profiles):
            profiles = await profiles
    return [dict(p) for p in profiles or []]


async def apply_profile(spawner: AttestedSSHSpawner, user_options: Mapping[str, Any]) -> None:
    """``apply_user_options``: the profile the user picked (or the default) sets its traits.

    Only the :data:`PROFILE_KEYS` of the chosen entry are applied. The spawner also calls this
    from ``start`` when the Hub did not (an API spawn without options), so a profile's policy is
    never skipped.
    """
    spawner._profile_applied = True
    profiles = await _profiles(spawner)
    if not profiles:
        return
    wanted = user_options.get("profile")
    if isinstance(wanted, list):  # form data
        wanted = wanted[0] if wanted else None
    chosen: dict[str, Any] | None
    if wanted is None:
        chosen = next((p for p in profiles if p.get("default")), profiles[0])
    else:
        chosen = next((p for p in profiles if p.get("slug") == wanted), None)
        if chosen is None:
            raise web.HTTPError(400, f"There is no confidential profile {wanted!r} for you.")
    for key in PROFILE_KEYS:
        if key in chosen:
            setattr(spawner, key, chosen[key])
    spawner.log.info("%s: profile %s", spawner._log_name, chosen.get("slug"))


async def options_form(spawner: AttestedSSHSpawner) -> str:
    """``options_form``: one radio button per profile, or no form when there is nothing to pick."""
    profiles = await _profiles(spawner)
    if len(profiles) < 2:
        return ""
    rows = []
    for i, p in enumerate(profiles):
        checked = (
            " checked" if p.get("default") or (i == 0 and not any(q.get("default") for q in profiles)) else ""
        )
        slug = html.escape(str(p.get("slug", "")), quote=True)
        name = html.escape(str(p.get("display_name") or p.get("slug", "")))
        desc = html.escape(str(p.get("description", "")))
        rows.append(
            f'<label><input type="radio" name="profile" value="{slug}"{checked}> '
            f"<b>{name}</b> {desc}</label><br>"
        )
    return "\n".join(rows)
