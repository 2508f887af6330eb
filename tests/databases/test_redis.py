"""Redis provider against a real redis-server started by the tests: each tenant database is an
ACL user confined to its key prefix; the matrix of what A can do to B's keys, the denied
commands, rotation, drop, hostile names and the write quota."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from berth.databases.errors import DatabaseExists, DatabaseServerUnsafe, InvalidDatabaseName
from berth.databases.provider import Account, Credentials
from berth.databases.redis_acl import RedisProvider, acl_rule
from tests.databases import servers
from tests.databases.conftest import unique_id
from tests.databases.hostile import HOSTILE_NAMES

Made = tuple[Account, Credentials]
# Redis's words for an ACL refusal: NOPERM for a command, these for one inside a script.
DENIED = "(?i)noperm|no permissions|can't access|can't run"


@pytest.fixture(scope="module")
def provider(redis_admin_url: str) -> RedisProvider:
    p = RedisProvider(redis_admin_url)
    p.prepare()
    return p


@pytest.fixture(scope="module")
def admin(redis_admin_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_admin_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def make(provider: RedisProvider) -> Iterator[Callable[..., Made]]:
    made: list[Account] = []

    def _make(name: str = "cache") -> Made:
        account = Account(tenant_id=unique_id(), database_id=unique_id(), name=name, engine="redis")
        made.append(account)
        return account, provider.create(account)

    yield _make
    for account in made:
        provider.drop(account)


def connect(creds: Credentials) -> redis.Redis:
    return redis.Redis.from_url(creds.url, decode_responses=True, socket_timeout=10)


def cmd(client: redis.Redis, *args: object) -> object:
    return client.execute_command(*args)


DENIED_COMMANDS: list[tuple[str, ...]] = [
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("DEBUG", "SLEEP", "0"),
    ("MODULE", "LIST"),
    ("KEYS", "*"),
    ("SCAN", "0"),
    ("RANDOMKEY",),
    ("DBSIZE",),
    ("SHUTDOWN", "NOSAVE"),
    ("ACL", "LIST"),
    ("ACL", "SETUSER", "intruder", "on", ">pw", "~*", "+@all"),
    ("ACL", "GETUSER", "default"),
    ("MONITOR",),
    ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "127.0.0.1:1"),
    ("CLIENT", "TRACKING", "ON", "BCAST"),
    ("CLIENT", "PAUSE", "10"),
    ("SWAPDB", "0", "1"),
    ("SELECT", "1"),
    ("MIGRATE", "127.0.0.1", "1", "", "0", "1000", "KEYS", "x"),
    ("INFO",),
    ("SLOWLOG", "GET"),
    ("LATENCY", "LATEST"),
    ("MEMORY", "STATS"),
    ("FUNCTION", "FLUSH"),
    ("FUNCTION", "LIST"),
    ("SCRIPT", "FLUSH"),
    ("SCRIPT", "KILL"),
    ("PUBSUB", "CHANNELS"),
    ("BGSAVE",),
    ("SAVE",),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("SORT", "anykey"),
]


def test_a_tenant_works_under_its_own_prefix(make: Callable[..., Made]) -> None:
    _, creds = make()
    p = creds.key_prefix
    assert creds.env() == {"REDIS_URL": creds.url, "REDIS_KEY_PREFIX": p}
    with connect(creds) as r:
        assert r.ping()
        assert cmd(r, "SELECT", "0") == "OK" or cmd(r, "SELECT", "0") is True
        r.set(f"{p}a", "1")
        r.incr(f"{p}a")
        r.hset(f"{p}h", "f", "v")
        r.rename(f"{p}a", f"{p}b")
        assert r.get(f"{p}b") == "2"
        assert r.eval("return redis.call('GET', KEYS[1])", 1, f"{p}b") == "2"
        assert r.memory_usage(f"{p}h") > 0
        assert r.publish(f"{p}events", "hi") == 0
        assert r.delete(f"{p}b", f"{p}h") == 2


@pytest.mark.parametrize("command", DENIED_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_dangerous_and_revealing_commands_are_denied(
    command: tuple[str, ...], make: Callable[..., Made], admin: redis.Redis
) -> None:
    _, creds = make()
    with connect(creds) as r:
        # DEBUG is also off in the server's config, which answers first; the ACL says no too.
        with pytest.raises(ResponseError):
            cmd(r, *command)
    assert cmd(admin, "ACL", "DRYRUN", creds.username, *command) != "OK"
    assert admin.ping()  # the server is still up (SHUTDOWN, DEBUG, PAUSE did nothing)


def test_a_tenant_cannot_touch_another_tenants_keys(
    make: Callable[..., Made], admin: redis.Redis
) -> None:
    _, a = make()
    _, b = make()
    pa, pb = a.key_prefix, b.key_prefix
    with connect(b) as rb:
        rb.set(f"{pb}secret", "b-only")
        rb.rpush(f"{pb}list", "1", "2")
    with connect(a) as r:
        r.set(f"{pa}mine", "a")
        attempts: list[tuple[object, ...]] = [
            ("GET", f"{pb}secret"),
            ("SET", f"{pb}secret", "a-was-here"),
            ("DEL", f"{pb}secret"),
            ("UNLINK", f"{pb}secret"),
            ("EXISTS", f"{pb}secret"),
            ("TYPE", f"{pb}secret"),
            ("DUMP", f"{pb}secret"),
            ("EXPIRE", f"{pb}secret", "1"),
            ("LRANGE", f"{pb}list", "0", "-1"),
            ("RENAME", f"{pa}mine", f"{pb}mine"),
            ("RENAME", f"{pb}secret", f"{pa}stolen"),
            ("LMOVE", f"{pb}list", f"{pa}list", "LEFT", "LEFT"),
            ("SUNIONSTORE", f"{pa}s", f"{pb}list"),
            ("OBJECT", "ENCODING", f"{pb}secret"),
            ("MEMORY", "USAGE", f"{pb}secret"),
            ("SET", "unprefixed", "x"),
            ("GET", pb.rstrip(":")),
            ("EVAL", "return redis.call('GET', KEYS[1])", "1", f"{pb}secret"),
            ("EVAL", "return redis.call('GET', ARGV[1])", "0", f"{pb}secret"),
            ("EVAL", "return redis.call('SET', ARGV[1], 'x')", "0", f"{pb}secret"),
            ("EVAL", "return redis.call('KEYS', '*')", "0"),
            ("EVAL", "return redis.call('SCAN', '0', 'MATCH', ARGV[1])", "0", f"{pb}*"),
            ("EVAL", "return redis.call('FLUSHALL')", "0"),
            ("PUBLISH", f"{pb}events", "spoof"),
            ("SPUBLISH", f"{pb}events", "spoof"),
            ("COPY", f"{pa}mine", f"{pb}copy"),
            ("MOVE", f"{pa}mine", "1"),
            ("SCAN", "0", "MATCH", f"{pb}*"),
            ("KEYS", f"{pb}*"),
        ]
        for attempt in attempts:
            with pytest.raises((NoPermissionError, ResponseError), match=DENIED):
                cmd(r, *attempt)
        for subscribe in (
            lambda ps: ps.subscribe(f"{pb}events"),
            lambda ps: ps.psubscribe("*"),  # every channel, others' keyspace events included
            lambda ps: ps.psubscribe("__keyspace@0__:*"),
        ):
            pubsub = r.pubsub()
            with pytest.raises((NoPermissionError, ResponseError), match=DENIED):
                subscribe(pubsub)
                pubsub.get_message(timeout=2)
            pubsub.close()
        # A's password opens no other user, and an AUTH as B with it fails.
        with pytest.raises((AuthenticationError, ResponseError)):
            cmd(r, "AUTH", b.username, a.password)
        with pytest.raises((AuthenticationError, ResponseError)):
            cmd(r, "AUTH", "berthadmin", a.password)
    assert admin.get(f"{pb}secret") == "b-only"
    assert admin.lrange(f"{pb}list", 0, -1) == ["1", "2"]
    assert admin.exists(f"{pa}stolen", f"{pb}mine", f"{pb}copy", "unprefixed") == 0


def test_rotate_refuses_the_old_password(
    make: Callable[..., Made], provider: RedisProvider
) -> None:
    account, old = make()
    session = connect(old)
    session.ping()
    new = provider.rotate_password(account)
    assert new.password != old.password
    with pytest.raises(AuthenticationError):
        connect(old).ping()
    with connect(new) as r:
        assert r.set(f"{new.key_prefix}k", "v")
    assert session.get(f"{old.key_prefix}k") == "v"  # a session open before goes on
    session.close()


def test_drop_removes_the_user_and_its_keys_only(
    make: Callable[..., Made], provider: RedisProvider, admin: redis.Redis
) -> None:
    _, keep = make()
    account = Account(tenant_id=unique_id(), database_id=unique_id(), name="gone", engine="redis")
    try:
        creds = provider.create(account)
        with pytest.raises(DatabaseExists):
            provider.create(account)
        session = connect(creds)
        for i in range(1200):  # more than one SCAN batch
            session.set(f"{creds.key_prefix}{i}", "x")
        connect(keep).set(f"{keep.key_prefix}stays", "1")
        provider.drop(account)
        with pytest.raises(redis.ConnectionError):
            session.ping()  # its open sessions are ended
        assert admin.acl_getuser(account.names.user) is None
        assert list(admin.scan_iter(match=f"{creds.key_prefix}*")) == []
        assert admin.get(f"{keep.key_prefix}stays") == "1"
        assert not provider.exists(account)
        with pytest.raises(AuthenticationError):
            connect(creds).ping()
    finally:
        provider.drop(account)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused_and_nothing_is_created(
    name: object, provider: RedisProvider, admin: redis.Redis
) -> None:
    users, keys = set(admin.acl_users()), admin.dbsize()
    with pytest.raises(InvalidDatabaseName):
        provider.create(
            Account(tenant_id=unique_id(), database_id=unique_id(), name=name, engine="redis")  # type: ignore[arg-type]
        )
    assert set(admin.acl_users()) == users and admin.dbsize() == keys


def test_over_quota_refuses_writes_but_reads_and_deletes_go_on(
    make: Callable[..., Made], provider: RedisProvider
) -> None:
    account, creds = make()
    p = creds.key_prefix
    session = connect(creds)
    for i in range(100):
        session.set(f"{p}{i}", "x" * 1000)
    used = provider.usage(account)
    assert used.bytes_used >= 100_000 and used.connections == 1
    provider.set_write_allowed(account, False)
    provider.set_write_allowed(account, False)
    # It holds for the session already open, at once.
    for attempt in (
        ("SET", f"{p}new", "x"),
        ("APPEND", f"{p}1", "more"),
        ("RPUSH", f"{p}l", "1"),
        ("EVAL", "return redis.call('SET', KEYS[1], 'x')", "1", f"{p}new"),
        ("RENAME", f"{p}1", f"{p}renamed"),
    ):
        with pytest.raises((NoPermissionError, ResponseError), match=DENIED):
            cmd(session, *attempt)
    assert session.get(f"{p}1") == "x" * 1000
    assert session.delete(f"{p}2") == 1  # freeing space is allowed
    with connect(creds) as r:  # and for new sessions, with the same password
        with pytest.raises(NoPermissionError):
            r.set(f"{p}new", "x")
        assert r.get(f"{p}3") == "x" * 1000
    assert provider.usage(account).bytes_used < used.bytes_used
    provider.set_write_allowed(account, True)
    assert session.set(f"{p}new", "x")
    with pytest.raises(NoPermissionError):
        session.flushall()  # giving writes back gives back nothing dangerous
    session.close()


def test_an_open_default_user_is_refused(redis_admin_url: str, admin: redis.Redis) -> None:
    admin.execute_command("ACL", "SETUSER", "default", "on", "nopass")
    try:
        with pytest.raises(DatabaseServerUnsafe):
            RedisProvider(redis_admin_url).check()
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "off", "resetpass")
    RedisProvider(redis_admin_url).check()


def test_the_rule_refuses_a_prefix_with_glob_characters() -> None:
    for prefix in ("", "a*:", "a?b:", "[a]:", "a\\:"):
        with pytest.raises(ValueError):
            acl_rule(prefix, [], write_allowed=True)


def test_tenant_users_survive_a_restart_of_the_server(tmp_path: Path) -> None:
    account = Account(tenant_id=unique_id(), database_id=unique_id(), name="kept", engine="redis")
    with servers.redis_server(tmp_path) as url:
        provider = RedisProvider(url)
        provider.check()
        creds = provider.create(account)
        provider.set_write_allowed(account, False)
    with servers.redis_server(tmp_path) as url:  # the same directory and ACL file
        provider = RedisProvider(url)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with redis.Redis(
            host="127.0.0.1", port=port, username=creds.username, password=creds.password
        ) as r:
            assert r.ping()
            with pytest.raises(NoPermissionError):
                r.set(f"{creds.key_prefix}k", "v")  # and still over quota
            with pytest.raises(NoPermissionError):
                r.flushall()
        provider.drop(account)
