"""Bearer-token authentication and role checks.

Tokens are 32 random bytes (URL-safe base64) prefixed `lw_`; only their SHA-256 is stored, in a
TokenIssued event and the token projection. A high-entropy secret needs no slow KDF: the hash
only has to make a leaked database useless for logging in.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.errors import PermissionDenied

R = model_pb2
ROLE_NAMES: dict[int, str] = {
    R.ROLE_ADMIN: "admin",
    R.ROLE_MANAGER: "manager",
    R.ROLE_ANNOTATOR: "annotator",
    R.ROLE_REVIEWER: "reviewer",
    R.ROLE_QA: "qa",
    R.ROLE_EXPERT: "expert",
    R.ROLE_AUDITOR: "auditor",
    R.ROLE_ML_CLIENT: "ml-client",
}
ROLE_BY_NAME: dict[str, int] = {v: k for k, v in ROLE_NAMES.items()}

SYSTEM_ID = "system"


def new_token() -> tuple[str, str]:
    """(secret, sha256-hex) for a new bearer token."""
    secret = "lw_" + secrets.token_urlsafe(32)
    return secret, hash_token(secret)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    person_id: str
    roles: frozenset[int]
    skills: frozenset[str]
    token_id: str = ""

    def has(self, *roles: int) -> bool:
        return not self.roles.isdisjoint(roles)

    @property
    def is_admin(self) -> bool:
        return R.ROLE_ADMIN in self.roles

    @property
    def sees_everything(self) -> bool:
        """Admins and auditors read every project; everyone else only their own."""
        return self.has(R.ROLE_ADMIN, R.ROLE_AUDITOR)

    @property
    def primary_role(self) -> int:
        for role in (
            R.ROLE_ADMIN,
            R.ROLE_MANAGER,
            R.ROLE_EXPERT,
            R.ROLE_QA,
            R.ROLE_REVIEWER,
            R.ROLE_ANNOTATOR,
            R.ROLE_AUDITOR,
            R.ROLE_ML_CLIENT,
        ):
            if role in self.roles:
                return role
        return R.ROLE_UNSPECIFIED

    def require(self, roles: Iterable[int], what: str) -> None:
        allowed = frozenset(roles)
        if self.roles.isdisjoint(allowed):
            names = ", ".join(sorted(ROLE_NAMES[r] for r in allowed))
            raise PermissionDenied(f"{what} needs one of the roles: {names}")


SYSTEM = Principal(SYSTEM_ID, frozenset({R.ROLE_ADMIN}), frozenset())


class TtlCache:
    """Tiny thread-safe TTL cache so every RPC does not re-resolve its token."""

    def __init__(self, ttl: float, max_items: int = 10_000) -> None:
        self._ttl = ttl
        self._max = max_items
        self._items: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Principal | None:
        with self._lock:
            hit = self._items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: str, value: Principal) -> None:
        with self._lock:
            if len(self._items) >= self._max:
                self._items.clear()
            self._items[key] = (time.monotonic() + self._ttl, value)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def expired(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at <= now
