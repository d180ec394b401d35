"""The Redis registry: what lets a module run as its own process and attach to a running gateway.

Keys of run R (the braces are a Redis Cluster hash tag: one run's keys live in one slot, so
the Lua scripts and transactions below stay valid on a cluster):

    flowsift:runs                 hash  R -> JSON (store, source, host, pid, started)
    flowsift:{R}:gateway          string, expires: the gateway's heartbeat
    flowsift:{R}:meta             hash  store, source, state (running|complete|failed), connections
    flowsift:{R}:conns            hash  conn -> "tcp 10.0.0.1:1234 10.0.0.2:80 c00000001.rec"
    flowsift:{R}:c:{conn}         hash  records, latest (record ID), closed   <- modules are woken
                                        by the keyspace notifications of these keys
    flowsift:{R}:modules          hash  bit -> JSON (name, host, pid, started; reserved)
    flowsift:{R}:alive:{bit}      string, expires: a module's heartbeat
    flowsift:{R}:done:{bit}       hash  conn -> records the module finished
    flowsift:{R}:counters:{bit}   hash  counter -> value (committed with "done")
    flowsift:{R}:out:{bit}        string: bytes of the module's event file that are committed
    flowsift:{R}:progress         list  "bit conn records", taken by the gateway once per batch
    flowsift:{R}:batches          stream, entry id SEQ-0: the batch log, one entry per publish:
                                        [touched, closed, [[conn, records, gaps, end0, end1, last_ts]...]]
                                        (what changed, how far each was published): modules
                                        replay it in order, so they see what workers see
    flowsift:{R}:seqs             hash  bit -> the last batch a module committed (the log is
                                        trimmed below the lowest)
    flowsift:{R}:taken            string: the module bits the gateway counts, written at each sync

The record files are the truth: after a Redis restart (no persistence) the gateway rebuilds
its keys from the store, and each module re-registers with its bit and rewrites its progress.
"""
import json
import os
import time
import urllib.parse

from flowsift.errors import env_number
from flowsift.registry.base import MAX_MODULES, Registry, RegistryError, new_run_id, whoami

# ms without a heartbeat after which a process is taken for dead; beats come 5 times as often
HEARTBEAT_TTL = env_number("FLOWSIFT_HEARTBEAT_TTL_MS", 5000, 100, None, "milliseconds of heartbeat")
HEARTBEAT_EVERY = HEARTBEAT_TTL / 5000
RETRY_FOR = env_number("FLOWSIFT_REGISTRY_RETRY", 120.0, 0, None, "seconds of retrying", float)   # back-off before giving up
TRIM_EVERY = 64               # batches between trims of the batch log
NOTIFY_FLAGS = "Kh"          # keyspace events (K) of hash commands (h): what modules subscribe to
PROBE_WAIT = 1.0             # seconds to wait for a probe's notification (they come within a round trip)

# Take a bit for module ARGV[2]: its own again if it held one and is not alive (a restart, or
# a bit the gateway reserved for it), else the wanted one if free, else the lowest free one.
# Returns {bit, resumed} or {-1, bit, holder} (alive elsewhere) or {-2} (all bits taken).
_REGISTER = """
local prefix, name, info, ttl, want, max, live, who = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local held = cjson.decode(all[i + 1])
  if held.name == name and (want < 0 or tonumber(all[i]) == want) then
    if redis.call('EXISTS', prefix .. 'alive:' .. all[i]) == 1 then
      return {-1, tonumber(all[i]), all[i + 1]}
    end
    redis.call('HSET', KEYS[1], all[i], info)
    if live == '1' then redis.call('SET', prefix .. 'alive:' .. all[i], who, 'PX', ttl) end
    return {tonumber(all[i]), 1}
  end
end
local function take(b)
  redis.call('HSET', KEYS[1], b, info)
  if live == '1' then redis.call('SET', prefix .. 'alive:' .. b, who, 'PX', ttl) end
  return {b, 0}
end
if want >= 0 and redis.call('HEXISTS', KEYS[1], want) == 0 then return take(want) end
for b = 0, max - 1 do
  if redis.call('HEXISTS', KEYS[1], b) == 0 then return take(b) end
end
return {-2}
"""

# A module's heartbeat key holds its process (host and pid): another process of the module
# takes the bit over once it has expired (this one held up: stopped, swapped out). Returns 1,
# 0 when the key is gone (a restarted server), or the holder's text when another holds it.
_BEAT = """
local held = redis.call('GET', KEYS[1])
if not held then return 0 end
if held ~= ARGV[1] then return held end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# A module's commit: finished connections (done hash and the gateway's progress list), counter
# increments, output length and the module's checkpoint, all or nothing, and only while its
# heartbeat key is its own (as _BEAT answers).
_COMMIT = """
local prefix, bit, ttl, who, outpos, n, ckpt, seq = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
local held = redis.call('GET', KEYS[1])
if not held then return 0 end
if held ~= who then return held end
if ckpt ~= '' then redis.call('SET', prefix .. 'ckpt:' .. bit, ckpt) end
if seq ~= '' then redis.call('HSET', prefix .. 'seqs', bit, seq) end
local i = 9
for _ = 1, n do
  redis.call('HSET', prefix .. 'done:' .. bit, ARGV[i], ARGV[i + 1])
  redis.call('RPUSH', prefix .. 'progress', bit .. ' ' .. ARGV[i] .. ' ' .. ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HINCRBY', prefix .. 'counters:' .. bit, ARGV[i], ARGV[i + 1])
  i = i + 2
end
if outpos ~= '' then redis.call('SET', prefix .. 'out:' .. bit, outpos) end
redis.call('SET', KEYS[1], who, 'PX', ttl)
return 1
"""


# A password the URL does not carry (so that it is not on a command line, for ps to show)
PASSWORD_ENV = "FLOWSIFT_REGISTRY_PASSWORD"


def _join(p):
    # urlunsplit drops the "//" of an empty host (unix:///path.sock): a URL as the user wrote it
    return (f"{p.scheme}://{p.netloc}{p.path}" + (f"?{p.query}" if p.query else "")
            + (f"#{p.fragment}" if p.fragment else ""))


def _redact(url):
    p = urllib.parse.urlsplit(url)
    if not p.password and "password=" not in p.query:
        return url
    if p.password:
        p = p._replace(netloc=p.netloc.replace(":" + p.password + "@", ":***@"))
    if "password=" in p.query:
        p = p._replace(query="&".join("password=***" if part.startswith("password=") else part
                                      for part in p.query.split("&")))
    return _join(p)


def split_password(url):
    """(`url` without its password, the password or None): a process started with this URL is
    given the URL on its command line and the password in its environment (PASSWORD_ENV)."""
    p = urllib.parse.urlsplit(url)
    password = urllib.parse.unquote(p.password) if p.password else None
    if p.password is not None:
        userinfo, _, host = p.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        p = p._replace(netloc=(user + "@" if user else "") + host)
    query = urllib.parse.parse_qsl(p.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k != "password"]
    if len(kept) != len(query):
        password = password or next(v for k, v in query if k == "password") or None
        p = p._replace(query=urllib.parse.urlencode(kept))
    return _join(p), password


def run_prefix(run):
    return f"flowsift:{{{run}}}:"


class RedisRegistry(Registry):
    kind = "redis"
    announces = True

    def __init__(self, url, run=None, role="gateway", retry_for=None):
        try:
            import redis
        except ImportError:
            raise RegistryError("the Redis registry needs redis-py: pip install 'redis>=5' hiredis") from None
        self._redis = redis
        self.url = url
        self.shown = _redact(url)
        self.role = role
        self.retry_for = RETRY_FOR if retry_for is None else retry_for
        # (a password in the URL comes first: redis-py lets the URL's options override these)
        extra = {"password": os.environ[PASSWORD_ENV]} if os.environ.get(PASSWORD_ENV) else {}
        try:
            self.r = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10,
                                          health_check_interval=15, decode_responses=True, **extra)
        except ValueError as e:
            raise RegistryError(f"registry {self.shown}: {e}") from None
        self.db = self.r.connection_pool.connection_kwargs.get("db", 0)
        self.user = self.r.connection_pool.connection_kwargs.get("username") or "default"
        self._register = None
        self._commit = None
        self._beat = None
        self.beat_ok = time.monotonic()  # when this module's heartbeat was last known to hold
        self._seqs = None             # the lowest batch every module has committed (gateway)
        self._check()
        self.run = run
        self.P = run_prefix(run) if run else None
        self.on_reconnect = None      # called after the server came back (a restart loses every key)
        self._last_beat = 0.0
        self._pubsub = None
        self.outages = 0              # times the server could not be reached
        self.rebuilt = 0              # times this process wrote its part of the run again (a restarted server)

    # --- connecting ---
    def _explain(self, e):
        """One line for an error of the server or the connection."""
        redis = self._redis
        text = str(e).strip() or type(e).__name__
        if "NOAUTH" in text or "Authentication required" in text:
            return (f"Redis at {self.shown} needs a password: redis://[user]:password@host:port/db, or "
                    f"{PASSWORD_ENV} in the environment (kept out of the command line)")
        if isinstance(e, redis.AuthenticationError) or "WRONGPASS" in text or "invalid password" in text \
                or "invalid username-password" in text:
            return f"Redis at {self.shown} refused user {self.user!r}: wrong password or no such user"
        if isinstance(e, redis.ConnectionError):
            return f"cannot reach Redis at {self.shown}: {text}"
        if "NOPERM" in text:
            return f"Redis at {self.shown}: user {self.user!r} may not do this: {text}"
        return f"Redis at {self.shown}: {text}"

    def _check(self):
        redis = self._redis
        try:
            self.r.ping()
        except redis.RedisError as e:
            raise RegistryError(self._explain(e)) from None

    def ensure_notifications(self):
        """Keyspace notifications of hash commands are what wakes modules: turn them on where
        this user may, else say exactly what to configure."""
        redis = self._redis

        def get():
            try:
                return self.r.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
            except redis.ResponseError:
                return None             # not allowed to look: try to set them all the same
        flags = self._retry(get)
        if flags is not None and "K" in flags and ("h" in flags or "A" in flags):
            return
        # a user who may not read the setting may still be sent the notifications: see one come
        if flags is None and self._retry(self._probe_notifications):
            return

        def put():
            try:
                self.r.config_set("notify-keyspace-events", "".join(sorted(set((flags or "") + NOTIFY_FLAGS))))
            except redis.ResponseError as e:
                return e
        refused = self._retry(put)
        if refused is not None:
            seen = (f"(notify-keyspace-events is {flags!r})" if flags is not None else
                    f"(a hash written as a probe was not announced within {PROBE_WAIT:g} s)")
            raise RegistryError(
                f"Redis at {self.shown} does not send keyspace notifications of hash commands {seen}, and user "
                f"{self.user!r} may not turn them on ({str(refused).split(':')[0].strip() or refused}). Configure the "
                f"server with 'notify-keyspace-events {NOTIFY_FLAGS}' in redis.conf (or as an administrator: "
                f"CONFIG SET notify-keyspace-events {NOTIFY_FLAGS}), or allow this user +config|get +config|set")

    def _probe_notifications(self):
        """Write a hash of its own and wait for its keyspace notification: what modules are woken
        by. True when it came."""
        key = f"flowsift:probe:{new_run_id()}"
        ps = self.r.pubsub()
        try:
            ps.subscribe(f"__keyspace@{self.db}__:{key}")
            # (the subscription is in place once confirmed: only then is the write announced to it)
            deadline = time.monotonic() + PROBE_WAIT
            msg = None
            while (msg is None or msg.get("type") != "subscribe") and time.monotonic() < deadline:
                msg = ps.get_message(timeout=max(0.0, deadline - time.monotonic()))
            self.r.hset(key, "probe", 1)
            try:
                while time.monotonic() < deadline:
                    msg = ps.get_message(timeout=max(0.0, deadline - time.monotonic()))
                    if msg is not None and msg.get("type") == "message" and msg.get("data") == "hset":
                        return True
                return False
            finally:
                self.r.delete(key)
        finally:
            ps.close()

    def _retry(self, op):
        """Run `op()`; while the server is unreachable, retry with back-off. After an outage,
        `on_reconnect` rebuilds what a restarted server lost."""
        redis = self._redis
        delay, start, lost = 0.05, None, False
        while True:
            try:
                if lost:
                    self.r.ping()
                    self.outages += 1
                    if self.on_reconnect is not None:
                        self.on_reconnect()
                    lost = False
                return op()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as e:
                now = time.monotonic()
                if start is None:
                    start = now
                    import sys
                    sys.stderr.write(f"flowsift: lost Redis at {self.shown} ({e}); reconnecting\n")
                if now - start > self.retry_for:
                    raise RegistryError(f"lost Redis at {self.shown} for {self.retry_for:.0f} s: {e}") from None
                lost = True
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except redis.RedisError as e:
                raise RegistryError(self._explain(e)) from None

    def _script(self):
        if self._register is None:
            self._register = self.r.register_script(_REGISTER)
        return self._register

    # --- runs ---
    def live_runs(self):
        """{run: meta} of runs whose gateway is alive."""
        runs = self._retry(lambda: self.r.hgetall("flowsift:runs"))
        return {run: json.loads(v) for run, v in runs.items() if self.gateway_alive(run)}

    def all_runs(self):
        return {run: json.loads(v) for run, v in self._retry(lambda: self.r.hgetall("flowsift:runs")).items()}

    def gateway_alive(self, run=None):
        """A heartbeat that has not expired, from a process that still exists when it is on
        this host (a gateway killed here is known dead at once, not after the expiry)."""
        held = self._retry(lambda: self.r.get(run_prefix(run or self.run) + "gateway"))
        if held is None:
            return False
        try:
            who = json.loads(held)
        except ValueError:
            return True
        return who.get("host") != whoami()["host"] or _pid_alive(who.get("pid"))

    def has_keys(self, run):
        """Is any key of `run` left (not only its meta: a module may have written some after)?"""
        match = _glob_escape(run_prefix(run)) + "*"
        return self._retry(lambda: next(iter(self.r.scan_iter(match=match, count=1000)), None) is not None)

    def remove_run(self, run):
        """Delete every key of `run` (its module bits and progress too)."""
        P = run_prefix(run)

        def op():
            n = 0
            batch = []
            # (the run's name taken literally: a '*' in it would match other runs' keys)
            for key in self.r.scan_iter(match=_glob_escape(P) + "*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    n += self.r.unlink(*batch)
                    batch = []
            if batch:
                n += self.r.unlink(*batch)
            self.r.hdel("flowsift:runs", run)
            return n
        return self._retry(op)

    # --- gateway side ---
    def check_run(self):
        """Can run id `self.run` (a fresh one when None) be started here? A live one is an
        error, said before the gateway makes anything (its store)."""
        self.ensure_notifications()
        if self.run is None:
            self.run = new_run_id()
            self.P = run_prefix(self.run)
        if self.gateway_alive():
            held = self.all_runs().get(self.run, {})
            raise RegistryError(f"run {self.run} is live in {self.shown} (gateway pid {held.get('pid')} on "
                                f"{held.get('host')}): pick another --run")

    def start_run(self, meta):
        """Claim run id `self.run` (a fresh one when None). A dead run of the same id, left by a
        crash, is cleared first; a live one is an error."""
        self.check_run()
        stale = self._retry(lambda: self.r.hexists("flowsift:runs", self.run)) or self.has_keys(self.run)
        if stale:
            self.remove_run(self.run)
            import sys
            sys.stderr.write(f"flowsift: removed the stale keys of an earlier run {self.run} (its gateway is gone)\n")
        self.meta = dict(meta, state="running", started=time.time(), **whoami())
        self._write_meta()

    def _write_meta(self):
        meta = {k: ("" if v is None else v) for k, v in self.meta.items()}

        def op():
            p = self.r.pipeline(transaction=True)
            p.set(self.P + "gateway", json.dumps(whoami()), px=HEARTBEAT_TTL)
            p.hset(self.P + "meta", mapping={k: str(v) for k, v in meta.items()})
            p.hset("flowsift:runs", self.run, json.dumps(meta))
            p.execute()
        self._retry(op)
        self._last_beat = time.monotonic()

    def set_state(self, state, **extra):
        self.meta.update(extra, state=state)
        self._write_meta()

    def heartbeat(self, bit=None):
        """Refresh this process's heartbeat (at most every HEARTBEAT_EVERY). False when it had
        gone (a restarted server, or a process too slow to beat): the caller writes its part again.
        A module's bit taken over by another process of it raises TakenOver."""
        now = time.monotonic()
        if now - self._last_beat < HEARTBEAT_EVERY:
            return True
        self._last_beat = now
        if bit is None:
            key = self.P + "gateway"
            return bool(self._retry(lambda: self.r.set(key, json.dumps(whoami()), px=HEARTBEAT_TTL, xx=True)))
        if self._beat is None:
            self._beat = self.r.register_script(_BEAT)
        res = self._retry(lambda: self._beat(keys=[f"{self.P}alive:{bit}"], args=[json.dumps(whoami()), HEARTBEAT_TTL]))
        return self._held(bit, res)

    def beat_due(self):
        return time.monotonic() - self._last_beat >= HEARTBEAT_EVERY

    def still_held(self, bit):
        """Before writing where another process of the module would write (its --events file):
        a process silent nearly as long as its heartbeat lasts (held up: stopped, swapped out)
        asks the server whether the bit is still its own. TakenOver if not; False when its key
        is gone."""
        if time.monotonic() - self.beat_ok < HEARTBEAT_TTL / 1000 - HEARTBEAT_EVERY:
            return True                 # (its key cannot have expired yet)
        self._last_beat = 0.0
        return self.heartbeat(bit)

    def _held(self, bit, res):
        # what _BEAT and _COMMIT answer: 1 (ours), 0 (gone), or the text of another holder
        if res == 1:
            self.beat_ok = time.monotonic()
            return True
        if res == 0:
            return False
        try:
            holder = json.loads(res)
        except (TypeError, ValueError):
            holder = {}
        raise TakenOver(bit, holder, time.monotonic() - self.beat_ok)

    def sync(self, new, updates, batch=None, taken=None):
        """The gateway's one round trip per batch: new identities, latest records and the
        batch's log entry out, module progress and registrations in; `taken`, the module bits
        it counts already (a module registered later waits to be among them before it reads).
        Returns (progress, modules, intact); `intact` is False when the run's keys are gone (a
        restarted server)."""
        P = self.P
        trim = None
        if batch is not None and batch[0] % TRIM_EVERY == 0 and self._seqs is not None:
            trim = self._seqs

        def op():
            p = self.r.pipeline(transaction=True)
            p.exists(P + "meta")
            if new:
                p.hset(P + "conns", mapping=dict(new))
            if batch is not None:
                seq, touched, closed, limits = batch
                p.xadd(P + "batches", {"b": json.dumps([touched, closed, limits], separators=(",", ":"))},
                       id=f"{seq}-0")
                if trim:
                    # every module that will ever read it is past these entries
                    p.xtrim(P + "batches", minid=f"{trim + 1}-0", approximate=False)
            for conn, records, latest, closed in updates:
                p.hset(f"{P}c:{conn}", mapping={"records": records, "latest": latest, "closed": int(closed)})
            p.lrange(P + "progress", 0, -1)
            p.delete(P + "progress")
            p.hgetall(P + "modules")
            p.hgetall(P + "seqs")
            if taken is not None:
                p.set(P + "taken", " ".join(map(str, sorted(taken))))
            p.set(P + "gateway", json.dumps(whoami()), px=HEARTBEAT_TTL)
            return p.execute()
        res = self._retry(op)
        self._last_beat = time.monotonic()
        if taken is not None:
            res = res[:-2] + res[-1:]
        progress = []
        for item in res[-5]:
            bit, conn, records = item.split()
            progress.append((int(bit), int(conn), int(records)))
        modules = {int(b): json.loads(v) for b, v in res[-3].items()}
        seqs = {int(b): int(v) for b, v in res[-2].items()}
        # the log may lose what every module that will read it has read: all registered (none
        # merely reserved, i.e. expected and not attached yet), each past some batch
        ready = modules and all(not info.get("reserved") and b in seqs for b, info in modules.items())
        self._seqs = min(seqs[b] for b in modules) if ready else None
        return progress, modules, bool(res[0])

    # --- the batch log (modules) ---
    def batches_after(self, seq, count=64):
        """Up to `count` entries of the batch log after batch `seq`: ([(seq, touched, closed,
        {conn: (records, gaps, end0, end1, last_ts)})], lost). `lost` is True when entries right after
        `seq` are no longer there (trimmed before this module registered, or gone with a
        restarted server): the caller reads those connections from the record files instead."""
        raw = self._retry(lambda: self.r.xrange(self.P + "batches", min=f"{seq + 1}-0", count=count))
        out = []
        for ident, fields in raw:
            touched, closed, limits = json.loads(fields["b"])
            out.append((int(ident.split("-")[0]), touched, closed, {c: tuple(rest) for c, *rest in limits}))
        if out:
            return out, out[0][0] != seq + 1
        last = self._retry(lambda: self.r.hget(self.P + "meta", "batches"))
        return out, last is not None and last != "" and int(last) > seq

    def taken(self, bit):
        """Does the gateway count module bit `bit` (so that it gives back nothing that module
        has not finished)?"""
        held = self._retry(lambda: self.r.get(self.P + "taken"))
        return held is not None and str(bit) in held.split()

    def alive_bits(self, bits):
        def op():
            p = self.r.pipeline(transaction=False)
            for b in bits:
                p.exists(f"{self.P}alive:{b}")
            return p.execute()
        return {b: bool(a) for b, a in zip(bits, self._retry(op))}

    def restore(self, conns, modules):
        """Rebuild the run's keys after a server restart: `conns` [(conn, identity, records,
        latest, closed)] from the record files, `modules` {bit: info} the gateway knew."""
        self.ensure_notifications()
        self.rebuilt += 1
        self._write_meta()

        def op():
            p = self.r.pipeline(transaction=False)
            for i in range(0, len(conns), 1000):
                part = conns[i:i + 1000]
                p.hset(self.P + "conns", mapping={c[0]: c[1] for c in part})
                for conn, _, records, latest, closed in part:
                    p.hset(f"{self.P}c:{conn}", mapping={"records": records, "latest": latest, "closed": int(closed)})
                p.execute()
            for bit, info in modules.items():
                p.hsetnx(self.P + "modules", bit, json.dumps(info))
            p.execute()
        self._retry(op)

    def reserve(self, name):
        return self._take(name, -1, {"name": name, "reserved": True}, live=False)[0]

    def end_run(self):
        if self.run is not None:
            # on fresh connections: a command cut short (Ctrl-C between its request and its
            # reply) leaves its reply to be read as the next command's
            self.r.connection_pool.disconnect()
            self.remove_run(self.run)

    # --- module side ---
    def _take(self, name, want, info, live=True):
        res = self._retry(lambda: self._script()(keys=[self.P + "modules"],
                                                 args=[self.P, name, json.dumps(info), HEARTBEAT_TTL,
                                                       -1 if want is None else want, MAX_MODULES, "1" if live else "0",
                                                       json.dumps(whoami())]))
        self.beat_ok = time.monotonic()
        if res[0] == -2:
            raise RegistryError(f"run {self.run}: all {MAX_MODULES} module bits are taken")
        if res[0] == -1:
            holder = json.loads(res[2])
            raise _Held(res[1], holder)
        return int(res[0]), bool(res[1])

    def register(self, name, bit=None, wait=HEARTBEAT_TTL / 1000 + 1):
        """Module `name` takes its bit. A holder that is still alive on this host but whose
        process is gone (killed) is taken over at once; elsewhere, after its heartbeat expires."""
        info = dict(name=name, started=time.time(), **whoami())
        deadline = time.monotonic() + wait
        while True:
            try:
                return self._take(name, bit, info)
            except _Held as held:
                h = held.holder
                if h.get("host") == info["host"] and not _pid_alive(h.get("pid")):
                    key = f"{self.P}alive:{held.bit}"
                    self._retry(lambda: self.r.delete(key))
                    continue
                # alive on this host: refused now (waiting could outlast it, and its finished
                # bit is not this process's to start again); elsewhere, its heartbeat decides
                if h.get("host") == info["host"] or time.monotonic() > deadline:
                    raise RegistryError(f"module {name} is already attached to run {self.run} "
                                        f"(pid {h.get('pid')} on {h.get('host')})") from None
                time.sleep(0.2)

    def release(self, bit):
        def op():
            p = self.r.pipeline(transaction=True)
            for k in ("alive", "done", "counters", "out", "ckpt"):
                p.delete(f"{self.P}{k}:{bit}")
            p.hdel(self.P + "modules", bit)
            p.hdel(self.P + "seqs", bit)
            p.execute()
        self._retry(op)

    def module_state(self, bit):
        """(done {conn: records}, counters {name: n}, committed output bytes or None, the last
        checkpoint (JSON text) or None)."""
        def op():
            p = self.r.pipeline(transaction=True)
            p.hgetall(f"{self.P}done:{bit}")
            p.hgetall(f"{self.P}counters:{bit}")
            p.get(f"{self.P}out:{bit}")
            p.get(f"{self.P}ckpt:{bit}")
            return p.execute()
        done, counters, out, ckpt = self._retry(op)
        return ({int(c): int(n) for c, n in done.items()}, {k: int(v) for k, v in counters.items()},
                None if out is None else int(out), ckpt)

    def commit_many(self, bit, items, outpos=None, checkpoint=None, seq=None):
        """Connections finished: [(conn, records, counter increments)], and the output written
        so far, in one atomic step: after a crash either all of it counts or none. Refused
        (returns False, nothing written) when this module's heartbeat key is gone, i.e. the
        server lost the module's state: the caller restores it first, then commits again.
        Raises TakenOver (nothing written) when another process of the module holds the bit."""
        done, totals = {}, {}
        for conn, records, counters in items:
            done[conn] = records
            for k, v in (counters or {}).items():
                totals[k] = totals.get(k, 0) + v
        args = [self.P, bit, HEARTBEAT_TTL, json.dumps(whoami()), "" if outpos is None else outpos, len(done),
                checkpoint or "", "" if seq is None else seq]
        for c, n in done.items():
            args += [c, n]
        for k, v in totals.items():
            args += [k, v]
        if self._commit is None:
            self._commit = self.r.register_script(_COMMIT)
        return self._held(bit, self._retry(lambda: self._commit(keys=[f"{self.P}alive:{bit}"], args=args)))

    def commit(self, bit, conn, records, counters=None, outpos=None):
        return self.commit_many(bit, [(conn, records, counters)], outpos)

    def restore_module(self, bit, name, done, counters, outpos, checkpoint=None):
        """After a server restart: this module's bit, progress and counters again (once: what
        finds its heartbeat key its own again has been written already)."""
        info = dict(name=name, started=time.time(), **whoami())
        who = json.dumps(whoami())

        def op():
            if self.r.get(f"{self.P}alive:{bit}") == who:
                return False
            p = self.r.pipeline(transaction=True)
            p.hset(self.P + "modules", bit, json.dumps(info))
            p.set(f"{self.P}alive:{bit}", json.dumps(whoami()), px=HEARTBEAT_TTL)
            p.delete(f"{self.P}done:{bit}", f"{self.P}counters:{bit}")
            items = list(done.items())
            for i in range(0, len(items), 1000):
                p.hset(f"{self.P}done:{bit}", mapping=dict(items[i:i + 1000]))
                # the gateway may have lost reports it had not taken yet: all of them again
                p.rpush(self.P + "progress", *[f"{bit} {c} {n}" for c, n in items[i:i + 1000]])
            if counters:
                p.hset(f"{self.P}counters:{bit}", mapping=counters)
            if outpos is not None:
                p.set(f"{self.P}out:{bit}", outpos)
            if checkpoint:
                p.set(f"{self.P}ckpt:{bit}", checkpoint)
                p.hset(self.P + "seqs", bit, json.loads(checkpoint).get("seq", 0))
            p.execute()
            return True
        if self._retry(op):
            self.rebuilt += 1
        self.beat_ok = time.monotonic()

    def holder(self, bit):
        """{name, host, pid, ...} of the process that holds module bit `bit`, or None."""
        held = self._retry(lambda: self.r.hget(self.P + "modules", bit))
        return None if held is None else json.loads(held)

    def run_meta(self):
        return self._retry(lambda: self.r.hgetall(self.P + "meta"))

    def connections(self):
        """{conn: identity text} of every connection of the run so far."""
        return {int(c): v for c, v in self._retry(lambda: self.r.hgetall(self.P + "conns")).items()}

    def connection_count(self):
        return self._retry(lambda: self.r.hlen(self.P + "conns"))

    # --- wake-ups ---
    def subscribe(self):
        """Listen to the keyspace notifications of this run's connection keys and meta."""
        self.ensure_notifications()
        base = f"__keyspace@{self.db}__:{self.P}"
        self._channel_base = len(base) + 2          # after "c:"
        self._meta_channel = base + "meta"

        def op():
            if self._pubsub is not None:
                try:
                    self._pubsub.close()
                except Exception:
                    pass
            ps = self.r.pubsub(ignore_subscribe_messages=True)
            # glob metacharacters in the run id are escaped; braces are literal in Redis patterns
            ps.psubscribe(_glob_escape(base) + "c:*")
            ps.subscribe(self._meta_channel)
            self._pubsub = ps
        self._retry(op)

    def wait(self, timeout):
        """Connections whose keys changed (a set), after waiting at most `timeout` seconds for
        the first notification; None after an outage (notifications may have been missed:
        the caller rescans)."""
        redis = self._redis
        changed = set()
        try:
            msg = self._pubsub.get_message(timeout=timeout)
            while msg is not None:
                ch = msg.get("channel") or ""
                if ch == self._meta_channel:
                    changed.add(-1)
                elif msg.get("data") == "hset":
                    try:
                        changed.add(int(ch[self._channel_base:]))
                    except ValueError:
                        pass
                msg = self._pubsub.get_message(timeout=0)
            return changed
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            # (counted as an outage only if the server cannot be reached now: a subscription that
            # learns late of a restart the other connection already came through is the same one)
            self._retry(lambda: self.r.ping())      # back-off until the server is back
            self.subscribe()
            return None

    def close(self):
        try:
            if self._pubsub is not None:
                self._pubsub.close()
            self.r.close()
        except Exception:
            pass


class TakenOver(RegistryError):
    """Another process of a module took its bit over while this one was held up past its
    heartbeat (stopped, swapped out)."""

    def __init__(self, bit, holder, silent):
        self.bit, self.holder, self.silent = bit, holder, silent
        super().__init__(f"bit {bit} was taken over by another process (pid {holder.get('pid')} on "
                         f"{holder.get('host')}) while this one was silent {silent:.0f} s, past its "
                         f"{HEARTBEAT_TTL / 1000:g} s heartbeat")


class _Held(Exception):
    def __init__(self, bit, holder):
        self.bit = bit
        self.holder = holder


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
        return True
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True


def _glob_escape(text):
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
