"""core/auth.py as pure code: parsing the Authorization value, verifying a key against its row,
the TTL cache and the Authenticator with a fake store and a fake clock (no server)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from turnstream import errors
from turnstream.client.credentials import with_api_key
from turnstream.core import auth
from turnstream.core.auth import ANONYMOUS, Authenticator, Credential, KeyRecord, Principal
from turnstream.core.ports import Failure, StoreUnavailable

T0 = 1_800_000_000.0


def reason(exc: pytest.ExceptionInfo[Failure]) -> str:
    return errors.reason_of(exc.value.status)


def key_and_record(tenant: str = "acme", scopes: str = "ingest,read") -> tuple[str, KeyRecord]:
    made = auth.new_key()
    record = KeyRecord(tenant, made.key_id, made.secret_hash, auth.parse_scopes(scopes))
    return made.key, record


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class FakeKeys:
    """The KeyLookup port over a dict; counts what it was asked."""

    def __init__(self, *records: KeyRecord) -> None:
        self.rows = {r.key_id: r for r in records}
        self.finds = 0
        self.any_calls = 0
        self.down = False
        self.gate: asyncio.Event | None = None

    async def find(self, key_id: str) -> KeyRecord | None:
        self.finds += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise StoreUnavailable("down", 2.0)
        return self.rows.get(key_id)

    async def any_active(self) -> bool:
        self.any_calls += 1
        return any(r.revoked_at is None for r in self.rows.values())


# -- parsing --------------------------------------------------------------------------------------


def test_a_new_key_parses_back_to_its_id_and_secret() -> None:
    made = auth.new_key()
    assert made.key.startswith(f"ts_{made.key_id}_")
    secret = made.key.split("_", 2)[2]
    assert len(secret) >= 43  # 32 bytes, url-safe base64 without padding
    assert auth.hash_secret(secret) == made.secret_hash
    for scheme in ("Bearer", "bearer", "UserKey", "userkey"):
        cred = auth.parse_authorization(f"{scheme} {made.key}")
        assert cred == Credential(made.key_id, secret)
    assert secret not in repr(cred)


@pytest.mark.parametrize("value", [None, "", "   "])
def test_no_value_is_no_credential(value: str | None) -> None:
    assert auth.parse_authorization(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer sk-not-ours",
        "Bearer ts_short_secret",
        "Bearer ts_0123456789ab_",
        "Bearer ts_0123456789AB_secret",
        "Bearer xx_0123456789ab_secret",
        "ts_0123456789ab_secret",
    ],
)
def test_malformed_values_are_refused_without_echoing_them(value: str) -> None:
    with pytest.raises(Failure) as exc:
        auth.parse_authorization(value)
    assert reason(exc) == "API_KEY_MALFORMED"
    assert exc.value.status.code == errors.code_pb2.UNAUTHENTICATED
    tail = value.split(" ")[-1]
    assert tail not in exc.value.status.message or tail in ("Bearer", "ts_0123456789ab_")


def test_scopes_are_parsed_and_checked() -> None:
    assert auth.parse_scopes(" Ingest, read ") == {"ingest", "read"}
    with pytest.raises(ValueError, match="unknown scope 'write'"):
        auth.parse_scopes("ingest,write")
    with pytest.raises(ValueError, match="at least one"):
        auth.parse_scopes(",")
    admin = Principal("t", "k", frozenset({"admin"}))
    assert admin.allows("ingest") and admin.allows("read")
    reader = Principal("t", "k", frozenset({"read"}))
    with pytest.raises(Failure) as exc:
        auth.require(reader, "ingest")
    assert reason(exc) == "SCOPE_MISSING"
    assert exc.value.status.code == errors.code_pb2.PERMISSION_DENIED
    assert "--scopes ingest" in exc.value.status.message


# -- verifying ------------------------------------------------------------------------------------


def test_verify_checks_the_secret_then_revocation_then_expiry() -> None:
    key, record = key_and_record()
    cred = auth.parse_authorization(f"Bearer {key}")
    assert cred is not None
    assert auth.verify(record, cred, T0) == Principal("acme", record.key_id, record.scopes)

    wrong = Credential(record.key_id, "x" * 43)
    for rec in (None, record):
        with pytest.raises(Failure) as exc:
            auth.verify(rec, wrong, T0)
        assert reason(exc) == "API_KEY_INVALID"
        assert "x" * 43 not in exc.value.status.message

    when = dt.datetime.fromtimestamp(T0 - 10, dt.UTC)
    revoked = KeyRecord(**{**_fields(record), "revoked_at": when})
    with pytest.raises(Failure) as exc:
        auth.verify(revoked, cred, T0)
    assert reason(exc) == "API_KEY_REVOKED"
    # A wrong secret says nothing of the key's state.
    with pytest.raises(Failure) as exc:
        auth.verify(revoked, wrong, T0)
    assert reason(exc) == "API_KEY_INVALID"

    expiring = KeyRecord(**{**_fields(record), "expires_at": when + dt.timedelta(seconds=20)})
    assert auth.verify(expiring, cred, T0).tenant == "acme"
    with pytest.raises(Failure) as exc:
        auth.verify(expiring, cred, T0 + 10)
    assert reason(exc) == "API_KEY_EXPIRED"


def _fields(record: KeyRecord) -> dict[str, object]:
    return {f: getattr(record, f) for f in record.__dataclass_fields__}


# -- the cache ------------------------------------------------------------------------------------


def test_ttl_cache_expires_and_stays_bounded() -> None:
    cache: auth.TtlCache[str, int | None] = auth.TtlCache(ttl=5.0, max_entries=3)
    cache.put("a", 1, T0)
    cache.put("miss", None, T0)
    assert cache.get("a", T0 + 4.9) == (True, 1)
    assert cache.get("miss", T0 + 4.9) == (True, None)  # a negative answer is cached too
    assert cache.get("a", T0 + 5.0) == (False, None)
    for i in range(10):
        cache.put(f"k{i}", i, T0)
    assert len(cache) == 3
    assert cache.get("k9", T0) == (True, 9)
    assert cache.get("k0", T0) == (False, None)


# -- the authenticator ----------------------------------------------------------------------------


async def test_one_lookup_per_key_per_ttl_and_revocation_seen_after_it() -> None:
    key, record = key_and_record()
    keys, clock = FakeKeys(record), Clock()
    a = Authenticator(keys, ttl=5.0, clock=clock)
    for _ in range(100):
        assert (await a.authenticate(f"Bearer {key}", "ingest")).tenant == "acme"
    assert keys.finds == 1
    keys.rows[record.key_id] = KeyRecord(
        **{**_fields(record), "revoked_at": dt.datetime.fromtimestamp(T0, dt.UTC)}
    )
    clock.now += 4.9
    await a.authenticate(f"Bearer {key}", "ingest")  # still cached: the TTL is the bound
    principal = Principal("acme", record.key_id, record.scopes)
    assert await a.recheck(principal) is None
    clock.now += 0.2
    with pytest.raises(Failure) as exc:
        await a.authenticate(f"Bearer {key}", "ingest")
    assert reason(exc) == "API_KEY_REVOKED"
    st = await a.recheck(principal)
    assert st is not None and errors.reason_of(st) == "API_KEY_REVOKED"
    assert keys.finds == 2


async def test_unknown_keys_are_cached_negatively_and_misses_are_shared() -> None:
    key, record = key_and_record()
    keys, clock = FakeKeys(), Clock()
    a = Authenticator(keys, ttl=5.0, clock=clock)
    for _ in range(3):
        with pytest.raises(Failure) as exc:
            await a.authenticate(f"Bearer {key}", "read")
        assert reason(exc) == "API_KEY_INVALID"
    assert keys.finds == 1
    keys.rows[record.key_id] = record
    clock.now += 5
    keys.gate = asyncio.Event()
    calls = [asyncio.ensure_future(a.authenticate(f"UserKey {key}", "read")) for _ in range(20)]
    await asyncio.sleep(0)
    keys.gate.set()
    assert {p.tenant for p in await asyncio.gather(*calls)} == {"acme"}
    assert keys.finds == 2  # twenty concurrent misses, one lookup


async def test_a_store_that_cannot_answer_is_unavailable_not_unauthenticated() -> None:
    key, record = key_and_record()
    keys, clock = FakeKeys(record), Clock()
    a = Authenticator(keys, ttl=5.0, clock=clock)
    keys.down = True
    with pytest.raises(Failure) as exc:
        await a.authenticate(f"Bearer {key}", "ingest")
    assert exc.value.status.code == errors.code_pb2.UNAVAILABLE
    assert errors.retry_after_of(exc.value.status) == 2.0
    # An open stream is not ended because the store is briefly down.
    assert await a.recheck(Principal("acme", record.key_id, record.scopes)) is None
    keys.down = False
    assert (await a.authenticate(f"Bearer {key}", "ingest")).tenant == "acme"


async def test_anonymous_mode_lasts_while_no_key_exists() -> None:
    keys, clock = FakeKeys(), Clock()
    a = Authenticator(keys, anonymous=True, ttl=5.0, clock=clock)
    assert await a.authenticate(None, "ingest") == ANONYMOUS
    assert await a.authenticate("UserKey whatever-kubiya-sends", "read") == ANONYMOUS
    assert await a.recheck(ANONYMOUS) is None
    key, record = key_and_record()
    keys.rows[record.key_id] = record
    clock.now += 5
    with pytest.raises(Failure) as exc:
        await a.authenticate(None, "ingest")
    assert reason(exc) == "API_KEY_MISSING"
    st = await a.recheck(ANONYMOUS)
    assert st is not None and errors.reason_of(st) == "API_KEY_MISSING"
    assert (await a.authenticate(f"Bearer {key}", "ingest")).tenant == "acme"
    # Without anonymous mode a missing key is refused at once.
    strict = Authenticator(FakeKeys(), clock=clock)
    with pytest.raises(Failure) as exc:
        await strict.authenticate(None, "read")
    assert reason(exc) == "API_KEY_MISSING"
    assert "Authorization: Bearer" in exc.value.status.message


@pytest.mark.parametrize(
    ("grpc_addr", "http_addr", "mode", "exist", "anonymous"),
    [
        ("127.0.0.1:50051", "127.0.0.1:8080", "auto", False, True),
        ("[::1]:50051", "localhost:8080", "auto", False, True),
        # Possible, not granted: the authenticator takes anonymous calls only while no key exists.
        ("127.0.0.1:50051", "127.0.0.1:8080", "auto", True, True),
        ("127.0.0.1:50051", "127.0.0.1:8080", "required", False, False),
        ("0.0.0.0:50051", "127.0.0.1:8080", "auto", True, False),
    ],
)
def test_anonymous_only_on_loopback(
    grpc_addr: str, http_addr: str, mode: str, exist: bool, anonymous: bool
) -> None:
    listeners = {"gRPC": grpc_addr, "HTTP": http_addr}
    assert auth.anonymous_allowed(mode, listeners, exist) is anonymous


@pytest.mark.parametrize("addr", ["0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "myhost:1"])
def test_refuses_to_start_exposed_without_keys(addr: str) -> None:
    with pytest.raises(ValueError) as exc:
        auth.anonymous_allowed("auto", {"gRPC": addr, "HTTP": "127.0.0.1:8080"}, False)
    message = str(exc.value)
    assert f"gRPC on {addr}" in message and "HTTP" not in message.split("reachable")[0]
    assert "turnstream keys create" in message and "127.0.0.1" in message
    with pytest.raises(ValueError, match="--auth must be one of auto, required"):
        auth.anonymous_allowed("off", {"gRPC": "127.0.0.1:1"}, True)


def test_the_sdk_sends_the_key_as_bearer_metadata() -> None:
    assert with_api_key([("x-trace", "1")], None) == (("x-trace", "1"),)
    assert with_api_key([("authorization", "old"), ("x", "1")], " ts_k ") == (
        ("x", "1"),
        ("authorization", "Bearer ts_k"),
    )
