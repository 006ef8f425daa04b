"""Client-side limits shared by every process that talks to one API account: one abstraction, two backends.

Vendor limits are per *account*, not per process: m3ter limits each org to 50 requests/s on the
Config and on the Ingest API, and each source IP to 20,000 (Config) / 5,000 (Ingest) requests per
rolling 5 minutes (shared/api-notes/m3ter.md, "Rate limits"; m3ter docs "Rate and Payload
Limits"); HubSpot limits each private app to 100 requests per rolling 10 s; NetSuite each account to
a few concurrent requests. Several mapped tasks or Celery workers each pacing to the whole limit in
their own process meet 429 storms, so the budget lives where every process sees it:

* **Redis** (the Celery broker already is one): :class:`RateLimiter` runs one Lua script that books
  the earliest slot both rules of a bucket allow, atomically, a GCRA for the per-org rate and a
  sliding log for the rolling window, and answers how long to wait for it; :class:`Slots` is a counting semaphore whose
  holders carry a lease, so a worker killed mid-request frees its slot when the lease runs out.
* **in-process** fallback: the same rules under a thread lock (one process's share only).

Which one: connection extra ``limiter_url``, else env ``M3SH_LIMITER_URL``, else the Celery broker
URL when the deployment runs the CeleryExecutor on a ``redis://`` broker, else in-process; the value
``memory`` forces in-process. A Redis that stops answering never fails a run: one warning, then the
process falls back to in-process limits.

Hand-written Lua rather than a library: ``limits`` (5.x) checks one limit per call, so holding two
rules costs two round trips and a slot taken in one when the other refuses, and it reports no wait
time; ``pyrate-limiter`` would be a new dependency whose blocking loop polls, and neither has a
leased semaphore for NetSuite. The scripts are ~40 lines and unit-tested against a fake clock.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

LIMITER_URL_ENV = "M3SH_LIMITER_URL"
LIMITER_PREFIX_ENV = "M3SH_LIMITER_PREFIX"
IN_PROCESS = "memory"
# A Redis call that takes longer than this is treated as Redis being gone (fall back, don't stall).
REDIS_TIMEOUT_S = 2.0
# Slots waiters poll at most this often: a release is not pushed to them (a pub/sub per account is
# more machinery than a 20 ms poll on a limit of a few concurrent requests warrants).
SLOT_POLL_S = 0.02

Clock = Callable[[], float]
# A wait below a microsecond is float noise (now + n * interval), granted rather than slept.
_EPSILON_S = 1e-6


@dataclass(frozen=True)
class Rules:
    """What one bucket allows: ``rate_per_s`` evenly spaced (GCRA, 0 = no rate rule) and at most
    ``window_limit`` requests in any rolling ``window_s`` seconds (0 = no window rule)."""

    rate_per_s: float = 0.0
    window_limit: int = 0
    window_s: float = 0.0
    # How much wider than window_s the client keeps its window (None: 2 %, at most 1 s).
    margin_s: float | None = None

    @property
    def interval_s(self) -> float:
        return 1.0 / self.rate_per_s if self.rate_per_s > 0 else 0.0

    @property
    def tolerance_s(self) -> float:
        # Half an interval: a request a little late keeps its slot instead of losing it, while any
        # 1-second span still holds at most rate + 1 requests (as the per-process Pacer did).
        return self.interval_s / 2

    @property
    def effective_window_s(self) -> float:
        # The server counts arrival times; widening the window a little absorbs network jitter
        # between requests that left exactly window_s apart.
        if self.window_limit <= 0:
            return 0.0
        return self.window_s + (self.margin_s if self.margin_s is not None else min(1.0, 0.02 * self.window_s))

    @property
    def active(self) -> bool:
        return self.rate_per_s > 0 or (self.window_limit > 0 and self.window_s > 0)


# Both scripts take "now" from ARGV[1] (tests pass a fake clock) or, when empty, from Redis's clock.
_NOW_LUA = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# --------------------------------------------------------------------------------------------- Redis
# KEYS[1]: the GCRA's theoretical arrival time (string), KEYS[2]: the rolling window's log (sorted set
# of member -> time). ARGV: now (empty: Redis server time, so hosts with skewed clocks agree),
# interval, tolerance, window limit, window seconds, a unique member. Books the earliest time both
# rules allow (now or later) and returns how far off it is, in seconds as a string: the caller sleeps
# that long and sends, with no second round trip. Booking rather than "refuse and let callers retry":
# with four processes contending, retrying woke every waiter for each free slot (a thundering herd
# of round trips) and, on a loaded 2-core machine, reached only ~0.5 of the limit.
_RESERVE_LUA = _NOW_LUA + """
local interval, tol = tonumber(ARGV[2]), tonumber(ARGV[3])
local wlimit, wsize = tonumber(ARGV[4]), tonumber(ARGV[5])
local at, tat = now, now
if interval > 0 then
  tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat - tol > at then at = tat - tol end
end
if wlimit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - wsize)
  local n = redis.call('ZCARD', KEYS[2])
  if n >= wlimit then
    local e = redis.call('ZRANGE', KEYS[2], n - wlimit, n - wlimit, 'WITHSCORES')
    local free = tonumber(e[2]) + wsize
    if free > at then at = free end
  end
  redis.call('ZADD', KEYS[2], at, ARGV[6])
  redis.call('PEXPIRE', KEYS[2], math.ceil((at - now + wsize) * 1000) + 1000)
end
if interval > 0 then
  local nxt = math.max(tat, at) + interval
  redis.call('SET', KEYS[1], tostring(nxt), 'PX', math.ceil((nxt - now) * 1000) + 1000)
end
if at - now < 0.000001 then return '0' end  -- below a microsecond: float noise
return tostring(at - now)
"""

# KEYS[1]: holders (sorted set of holder -> lease expiry). ARGV: now (empty: server time), limit,
# lease seconds, holder. Expired leases (a killed worker's) are dropped first. Returns "0" when the
# slot is taken, else the seconds until the earliest lease ends (callers poll sooner).
_ACQUIRE_SLOT_LUA = _NOW_LUA + """
local limit, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease * 1000) + 1000)
  return '0'
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(tonumber(first[2]) - now)
"""

_CLIENTS: dict[tuple[int, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()
_WARNED: set[str] = set()


def redact_url(url: str) -> str:
    """A Redis URL fit for a log line: the password (and user) dropped."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _redis(url: str) -> Any:
    """One client per (process, URL): redis-py's pool is not fork-safe to share, so the pid is in the key."""
    import redis

    key = (os.getpid(), url)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                          socket_connect_timeout=REDIS_TIMEOUT_S, health_check_interval=30)
            _CLIENTS[key] = client
        return client


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.RedisError, OSError)


def _warn_fallback(url: str, what: str, exc: BaseException) -> None:
    shown = redact_url(url)
    with _CLIENTS_LOCK:
        if shown in _WARNED:
            return
        _WARNED.add(shown)
    log.warning("m3sh limiter: Redis at %s is unreachable (%s); limiting %s in this process only from now on, "
                "so other workers are not coordinated and may meet 429s", shown, type(exc).__name__, what)


def resolve_limiter_url(configured: str | None = None) -> str | None:
    """The Redis URL limits are shared through, or None for in-process limits (see the module doc)."""
    for value in (configured, os.environ.get(LIMITER_URL_ENV)):
        if value and value.strip():
            url = value.strip()
            return None if url.lower() in (IN_PROCESS, "local", "none", "off") else url
    try:
        from airflow.configuration import conf

        executor = str(conf.get("core", "executor", fallback="") or "")
        broker = str(conf.get("celery", "broker_url", fallback="") or "")
    except Exception:  # pragma: no cover - no Airflow config (a bare script): in-process is the safe answer
        return None
    if "Celery" in executor and broker.startswith(("redis://", "rediss://", "unix://")):
        return broker
    return None


def key_prefix(configured: str | None = None) -> str:
    return configured or os.environ.get(LIMITER_PREFIX_ENV) or "m3sh:limits"


# ------------------------------------------------------------------------------------------ in-process
class _LocalBucket:
    """The Lua script's rules under a lock, for one process (and the unit tests' reference)."""

    def __init__(self, rules: Rules, clock: Clock) -> None:
        self.rules = rules
        self.clock = clock
        self._tat = 0.0
        self._log: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        r = self.rules
        with self._lock:
            now = self.clock()
            at, tat = now, now
            if r.interval_s > 0:
                tat = self._tat
                at = max(at, tat - r.tolerance_s)
            if r.window_limit > 0:
                size = r.effective_window_s
                while self._log and self._log[0] <= now - size:
                    self._log.popleft()
                n = len(self._log)
                if n >= r.window_limit:
                    at = max(at, self._log[n - r.window_limit] + size)
                self._log.append(at)  # bookings are in time order (see the Lua), so the deque stays sorted
            if r.interval_s > 0:
                self._tat = max(tat, at) + r.interval_s
            wait = at - now
            return wait if wait > _EPSILON_S else 0.0


class RateLimiter:
    """One bucket's limits: the per-org rate (or per-app burst) and the rolling window, shared through
    Redis when a URL is given, else in this process. :meth:`acquire` blocks until a request may go."""

    def __init__(self, rules: Rules, *, rate_key: str, window_key: str, url: str | None,
                 clock: Clock = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 server_time: bool = True) -> None:
        self.rules = rules
        self.rate_key = rate_key
        self.window_key = window_key
        self.url = url
        self._local = _LocalBucket(rules, clock)
        self._clock = clock
        self._sleep = sleep
        # Redis side: the server's clock unless a test injects one (then the script gets clock()).
        self._server_time = server_time
        self._script: Any = None
        self.redis_ok = url is not None

    @property
    def backend(self) -> str:
        return "redis" if self.redis_ok else "in-process"

    def reserve(self) -> float:
        """Book the earliest slot both rules allow; return the seconds until it (0.0: now). The caller
        must wait that long before sending: the slot is taken either way."""
        if not self.rules.active:
            return 0.0
        if self.redis_ok and self.url is not None:
            try:
                return self._reserve_redis(self.url)
            except _redis_errors() as exc:
                self.redis_ok = False
                _warn_fallback(self.url, f"{self.rate_key} / {self.window_key}", exc)
        return self._local.reserve()

    def _reserve_redis(self, url: str) -> float:
        if self._script is None:
            self._script = _redis(url).register_script(_RESERVE_LUA)
        r = self.rules
        now = "" if self._server_time else repr(self._clock())
        answer = self._script(keys=[self.rate_key, self.window_key],
                              args=[now, repr(r.interval_s), repr(r.tolerance_s), r.window_limit,
                                    repr(r.effective_window_s), uuid.uuid4().hex])
        return float(answer)

    def acquire(self) -> float:
        """Wait for a slot; return the seconds spent waiting."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    async def aacquire(self) -> float:
        """:meth:`acquire` for an event loop: the Redis round trip runs off the loop, the wait is a sleep."""
        wait = await asyncio.to_thread(self.reserve) if self.redis_ok else self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)
        return wait


class Slots:
    """At most ``limit`` requests in flight per account across processes (NetSuite's concurrency limit).

    Redis: holders in a sorted set with a lease (``lease_s``, longer than a request's timeout), so a
    worker killed while holding a slot frees it when the lease ends. In-process: a bounded semaphore.
    """

    def __init__(self, key: str, limit: int, *, url: str | None, lease_s: float) -> None:
        self.key = key
        self.limit = limit
        self.url = url
        self.lease_s = lease_s
        self._local = threading.BoundedSemaphore(limit)
        self._script: Any = None
        self.redis_ok = url is not None

    @property
    def backend(self) -> str:
        return "redis" if self.redis_ok else "in-process"

    def _try_redis(self, url: str, holder: str) -> float:
        if self._script is None:
            self._script = _redis(url).register_script(_ACQUIRE_SLOT_LUA)
        return float(self._script(keys=[self.key], args=["", self.limit, repr(self.lease_s), holder]))

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the duration of the block (one request attempt)."""
        holder = None
        if self.redis_ok and self.url is not None:
            holder = f"{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex}"
            try:
                while (wait := self._try_redis(self.url, holder)) > 0:
                    time.sleep(min(wait, SLOT_POLL_S))
            except _redis_errors() as exc:
                self.redis_ok, holder = False, None
                _warn_fallback(self.url, f"concurrency of {self.key}", exc)
        if holder is None:
            with self._local:
                yield
            return
        try:
            yield
        finally:
            try:
                _redis(self.url).zrem(self.key, holder)  # type: ignore[arg-type]
            except _redis_errors():
                pass  # the lease frees it; a failed release must not fail the request that succeeded

    def holders(self) -> int:
        """Slots held right now across processes (Redis) — for tests and diagnostics."""
        if not (self.redis_ok and self.url):
            return self.limit - self._local._value  # type: ignore[attr-defined]
        client = _redis(self.url)
        client.zremrangebyscore(self.key, "-inf", time.time())
        return int(client.zcard(self.key))


# --------------------------------------------------------------------------------- process-wide registry
_LIMITERS: dict[tuple[Any, ...], RateLimiter] = {}
_SLOTS: dict[tuple[Any, ...], Slots] = {}
_REGISTRY_LOCK = threading.Lock()


def shared_limiter(rules: Rules, *, rate_key: str, window_key: str, url: str | None) -> RateLimiter:
    """One :class:`RateLimiter` per (keys, rules, backend) in this process, whichever hook asks."""
    key = (rate_key, window_key, rules, url)
    with _REGISTRY_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = RateLimiter(rules, rate_key=rate_key, window_key=window_key, url=url)
        return limiter


def shared_slots(key: str, limit: int, *, url: str | None, lease_s: float) -> Slots:
    """One :class:`Slots` per key in this process. The first caller fixes the limit: two hooks
    disagreeing about an account's governance must not double it (a later, different limit is logged)."""
    with _REGISTRY_LOCK:
        slots = _SLOTS.get((key, url))
        if slots is None:
            slots = _SLOTS[(key, url)] = Slots(key, limit, url=url, lease_s=lease_s)
        elif slots.limit != limit:
            log.debug("%s already limited to %s concurrent requests; ignoring %s", key, slots.limit, limit)
        return slots


def bucket_key(prefix: str, host: str, scope: str, bucket: str, kind: str) -> str:
    """``<prefix>:{<host>}:<scope>:<bucket>:<kind>``; the host in braces is a Redis Cluster hash tag, so
    the two keys one script touches live in one slot."""
    host = urlsplit(host).netloc or host
    return f"{prefix}:{{{host}}}:{scope}:{bucket}:{kind}"
