"""Core: who is calling. Every door hands the `Authorization` value it received (HTTP header,
gRPC metadata `authorization`) and the scope its route needs to one `Authenticator`, and gets a
`Principal` (tenant, key id, scopes) or a `Failure` from the error table. The key rows come
through a small port (`KeyLookup`, implemented in store/keys.py) behind a TTL cache, so a
request costs a dict lookup and one SHA-256, not a database round trip (docs/auth.md).

Key format, shown once at creation: `ts_<key_id>_<secret>`. `key_id` is public (it names the row
and appears in logs and `keys list`); `secret` is 32 random bytes, url-safe base64. Only
SHA-256(secret) is stored."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from google.rpc import status_pb2

from turnstream import errors
from turnstream.core.ports import Failure, StoreUnavailable

INGEST, READ, ADMIN = "ingest", "read", "admin"
# `admin` holds every scope (there is no admin-only call yet: keys are managed by the CLI).
SCOPES = (INGEST, READ, ADMIN)
ANONYMOUS_TENANT = "default"
KEY_PREFIX = "ts"
KEY_ID_BYTES = 6  # 12 hex characters: a public name, unique per table (checked at creation)
SECRET_BYTES = 32
# The schemes accepted before the key: the OAuth-style one and Kubiya's.
SCHEMES = ("bearer", "userkey")

# Revocation bound: a revoked key works for at most this long on a replica that cached it.
DEFAULT_TTL = 5.0
DEFAULT_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: every write and every read is bound to `tenant`."""

    tenant: str
    key_id: str  # "" for the anonymous caller of a loopback server without keys
    scopes: frozenset[str]

    @property
    def anonymous(self) -> bool:
        return not self.key_id

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes


ANONYMOUS = Principal(ANONYMOUS_TENANT, "", frozenset(SCOPES))


@dataclass(frozen=True, slots=True)
class Credential:
    """A presented key split into its public id and its secret (never logged)."""

    key_id: str
    secret: str

    def __repr__(self) -> str:  # the secret must never reach a log line or a traceback
        return f"Credential(key_id={self.key_id!r}, secret=<hidden>)"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One row of `api_keys`, as the store returns it."""

    tenant_id: str
    key_id: str
    secret_hash: str
    scopes: frozenset[str]
    name: str = ""
    created_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: the full key to show once, and what is stored of it."""

    key: str
    key_id: str
    secret_hash: str


def hash_secret(secret: str) -> str:
    # SHA-256, not a password hash (bcrypt, argon2): the secret is 256 random bits, so there is
    # no dictionary to try and no brute force to slow down; a slow hash would only cost CPU on
    # every cache miss. A password hash protects low-entropy secrets; these are not.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> NewKey:
    key_id = token_bytes(KEY_ID_BYTES).hex()
    secret = base64.urlsafe_b64encode(token_bytes(SECRET_BYTES)).rstrip(b"=").decode()
    return NewKey(f"{KEY_PREFIX}_{key_id}_{secret}", key_id, hash_secret(secret))


def parse_scopes(text: str | Iterable[str]) -> frozenset[str]:
    """ "ingest,read" -> {"ingest", "read"}; ValueError naming what is wrong."""
    words = text.split(",") if isinstance(text, str) else list(text)
    scopes = frozenset(w.strip().lower() for w in words if w.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError(f"at least one scope is needed: {', '.join(SCOPES)}")
    return scopes


def _fail(message: str, reason: str, key_id: str = "") -> Failure:
    return Failure(errors.unauthenticated(message, reason, key_id))


_HOW = "send 'Authorization: Bearer ts_<key_id>_<secret>' (a key from `turnstream keys create`)"


def parse_authorization(value: str | None) -> Credential | None:
    """The credential in an Authorization value (`Bearer <key>` or Kubiya's `UserKey <key>`),
    None when there is none; a Failure (API_KEY_MALFORMED) for anything else. Messages name
    what is wrong and never repeat the value."""
    if value is None or not value.strip():
        return None
    scheme, _, key = value.strip().partition(" ")
    key = key.strip()
    if scheme.lower() not in SCHEMES or not key:
        raise _fail(f"the Authorization value is not understood; {_HOW}", "API_KEY_MALFORMED")
    prefix, sep, rest = key.partition("_")
    key_id, sep2, secret = rest.partition("_")
    if (
        prefix != KEY_PREFIX
        or not sep
        or not sep2
        or len(key_id) != 2 * KEY_ID_BYTES
        or not all(c in "0123456789abcdef" for c in key_id)
        or not secret
        or len(secret) > 256
    ):
        raise _fail(
            f"the API key is malformed: a key looks like ts_<key_id>_<secret>; {_HOW}",
            "API_KEY_MALFORMED",
        )
    return Credential(key_id, secret)


def verify(record: KeyRecord | None, credential: Credential, now: float) -> Principal:
    """The Principal of a presented key, or a Failure: the secret is checked first (so knowing
    a key id tells nothing of its state), then revocation and expiry. `now`: Unix seconds."""
    key_id = credential.key_id
    presented = hash_secret(credential.secret)
    if record is None or not hmac.compare_digest(presented, record.secret_hash):
        raise _fail(
            f"API key {key_id} is not valid (unknown key id or wrong secret); {_HOW}",
            "API_KEY_INVALID",
            key_id,
        )
    problem = key_state(record, now)
    if problem is not None:
        raise Failure(problem)
    return Principal(record.tenant_id, record.key_id, record.scopes)


def key_state(record: KeyRecord, now: float) -> status_pb2.Status | None:
    """None while the key may be used, else why not (revoked, expired)."""
    key_id = record.key_id
    if record.revoked_at is not None:
        return errors.unauthenticated(
            f"API key {key_id} was revoked at {record.revoked_at.isoformat()}; use another key",
            "API_KEY_REVOKED",
            key_id,
        )
    if record.expires_at is not None and record.expires_at.timestamp() <= now:
        return errors.unauthenticated(
            f"API key {key_id} expired at {record.expires_at.isoformat()}; use another key",
            "API_KEY_EXPIRED",
            key_id,
        )
    return None


def require(principal: Principal, scope: str) -> Principal:
    if not principal.allows(scope):
        raise Failure(errors.scope_missing(principal.key_id, scope, principal.scopes))
    return principal


K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class TtlCache(Generic[K, V]):
    """Bounded map whose entries expire `ttl` seconds after they were put, as pure state: the
    caller passes the time. Oldest entries are evicted past `max_entries` (a spray of random
    key ids cannot grow it)."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float) -> tuple[bool, V | None]:
        """(True, value) while fresh; (False, None) when absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        if now - entry[0] >= self.ttl:
            del self._entries[key]
            return False, None
        return True, entry[1]

    def put(self, key: K, value: V, now: float) -> None:
        self._entries[key] = (now, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class KeyLookup(Protocol):
    """What the authenticator needs of the store (store/keys.py): on its own connections."""

    async def find(self, key_id: str) -> KeyRecord | None: ...

    async def any_active(self) -> bool: ...


class Authenticator:
    """Principal of a request, with at most one store lookup per key id per `ttl` seconds (and
    one at a time: concurrent misses of one key id share it). Positive and negative answers
    are cached alike, so a revocation, an expiry or a new key is seen within `ttl` seconds on
    every replica, with no messaging between replicas.

    `anonymous`: the server is on loopback and auth is not required — every call is the
    `default` tenant with every scope, as long as no usable (un-revoked, unexpired) key
    exists; once one does, every call needs a key."""

    def __init__(
        self,
        lookup: KeyLookup,
        *,
        anonymous: bool = False,
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lookup = lookup
        self.anonymous = anonymous
        self.clock = clock
        self._keys: TtlCache[str, KeyRecord | None] = TtlCache(ttl, max_entries)
        self._any: TtlCache[str, bool] = TtlCache(ttl, 1)
        self._pending: dict[str, asyncio.Future[KeyRecord | None]] = {}

    async def authenticate(self, authorization: str | None, scope: str) -> Principal:
        """The caller's Principal holding `scope`, or a Failure (UNAUTHENTICATED,
        PERMISSION_DENIED, or UNAVAILABLE when the store cannot be asked)."""
        if self.anonymous and not await self._keys_exist():
            # No key exists yet, so there is nothing to check a presented one against: it is
            # ignored (Kubiya's clients always send one), the caller is `default`.
            return ANONYMOUS
        credential = parse_authorization(authorization)
        if credential is None:
            raise _fail(f"this call needs an API key; {_HOW}", "API_KEY_MISSING")
        record = await self._record(credential.key_id)
        return require(verify(record, credential, self.clock()), scope)

    async def recheck(self, principal: Principal) -> status_pb2.Status | None:
        """For a long call (an Append stream): None while `principal` still holds, else the
        status to end it with. Cheap: the cache answers until its entry expires. A store that
        cannot be asked keeps the call going (the writer reports the store itself)."""
        try:
            if principal.anonymous:
                if self.anonymous and not await self._keys_exist():
                    return None
                return errors.unauthenticated(
                    f"API keys now exist on this server; this call needs one; {_HOW}",
                    "API_KEY_MISSING",
                )
            record = await self._record(principal.key_id)
        except Failure:
            return None  # only UNAVAILABLE is raised here
        if record is None:
            return errors.unauthenticated(
                f"API key {principal.key_id} no longer exists", "API_KEY_INVALID", principal.key_id
            )
        # The secret was verified at the start of the call: only the row's state can change.
        return key_state(record, self.clock())

    def forget(self) -> None:
        """Drop every cached answer (tests and `keys revoke` in the same process)."""
        self._keys = TtlCache(self._keys.ttl, self._keys.max_entries)
        self._any = TtlCache(self._any.ttl, 1)

    async def _keys_exist(self) -> bool:
        now = self.clock()
        hit, value = self._any.get("", now)
        if hit:
            return bool(value)
        exists = await self._ask(self.lookup.any_active())
        self._any.put("", exists, self.clock())
        return exists

    async def _record(self, key_id: str) -> KeyRecord | None:
        hit, record = self._keys.get(key_id, self.clock())
        if hit:
            return record
        pending = self._pending.get(key_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._pending[key_id] = future
        try:
            record = await self._ask(self.lookup.find(key_id))
            self._keys.put(key_id, record, self.clock())
            future.set_result(record)
            return record
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must log it
            raise
        finally:
            del self._pending[key_id]

    @staticmethod
    async def _ask(lookup: Awaitable[T]) -> T:
        try:
            return await lookup
        except StoreUnavailable as exc:
            raise Failure(
                errors.unavailable(
                    "the key store is unavailable; the key could not be checked, retry",
                    exc.retry_after,
                )
            ) from exc


AUTH_MODES = ("auto", "required")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and "localhost"; anything else (0.0.0.0, a name, an interface
    address) may be reachable from elsewhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def anonymous_allowed(mode: str, listeners: dict[str, str], keys_exist: bool) -> bool:
    """Whether calls without a key are the `default` tenant (loopback only, mode auto, no
    keys yet: the authenticator re-checks the last part as keys are created). ValueError, saying
    why and how to fix it, when the server must not start: on an address others can reach
    with no key to demand."""
    if mode not in AUTH_MODES:
        raise ValueError(f"--auth must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
    exposed = {name: addr for name, addr in listeners.items() if not is_loopback(_host(addr))}
    if exposed and not keys_exist:
        where = ", ".join(f"{name} on {addr}" for name, addr in exposed.items())
        raise ValueError(
            f"refusing to start: {where} is reachable beyond this machine and no API key "
            "exists, so no caller could be authenticated (anonymous calls are only taken on "
            "loopback). Create a key first — turnstream keys create --tenant NAME --scopes "
            "ingest,read (with the same --database-url) — or listen on loopback only: "
            "--grpc-addr 127.0.0.1:50051 --http-addr 127.0.0.1:8080"
        )
    return mode == "auto" and not exposed


def _host(addr: str) -> str:
    host = addr.rpartition(":")[0] if ":" in addr else addr
    return host.strip("[]")
