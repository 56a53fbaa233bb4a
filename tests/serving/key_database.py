"""A stand-in for LiteLLM's key database in the serving tests: the function a
RoutePolicy names in ``spec.litellm.customAuth`` (LiteLLM's
``general_settings.custom_auth``), which answers each request's API key with the
``UserAPIKeyAuth`` LiteLLM would have built from a virtual key and its team in
its database: key alias, metadata, team id, team alias and team metadata.

LiteLLM keeps virtual keys and teams in Postgres through the prisma client, and
``prisma generate`` downloads Prisma's query engine from binaries.prisma.sh,
which CI cannot reach. This module runs inside the LiteLLM proxy (a ConfigMap on
its PYTHONPATH) and is never imported by the tests themselves. The keys and whom
each stands for come from the environment (``STAND_IN_KEYS``, JSON read from a
Secret), never from the ConfigMap that carries this code.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import HTTPException, Request
from litellm.proxy._types import UserAPIKeyAuth

KEYS_ENV = "STAND_IN_KEYS"
"""JSON: each API key -> the UserAPIKeyAuth fields of its virtual key (key_alias,
metadata, team_id, team_alias, team_metadata)."""

KEYS: dict[str, dict[str, Any]] = json.loads(os.environ.get(KEYS_ENV) or "{}")


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """What LiteLLM knows of ``api_key``; 401 for a key it does not know, the
    master key included, as a custom auth function answers for every key."""
    identity = KEYS.get(api_key)
    if identity is None:
        raise HTTPException(status_code=401, detail="unknown API key")
    return UserAPIKeyAuth(api_key=api_key, **identity)
