#!/usr/bin/env python3
"""Redis's CPU per outbox message: the relay's batch as its script
(`PUBLISH`, read from src/outbox.rs) against the same rows sent as a
pipeline of XADDs, in turns, on the Redis at REDIS_HOST:REDIS_PORT
(127.0.0.1:6379). Each turn adds BATCHES (300) batches of 500 rows, as
the relay's are (a join's fact and its nine fields), to a stream of its
own, and reads the CPU Redis spent from /proc (so Redis must run on this
machine). Usage: loadtest/relay-script.py [ROUNDS]"""
import hashlib, os, re, socket, sys, time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SOURCE = open(os.path.join(ROOT, "src/outbox.rs")).read()
SCRIPT = re.search(r'redis::Script::new\(\s*r"(.*?)",\s*\)', SOURCE, re.S).group(1)
BATCH, BATCHES = 500, int(os.environ.get("BATCHES", "300"))
PREFIX = "turnout-relay-script-bench:"
PAYLOAD = ('{"schema_version":1,"event":{"Joined":{"party":{"user":'
           '"01a25225-34e2-73c3-8e3c-f8d8926880b2","seats":1,"joined_at":'
           '"2026-12-07T20:20:00.123456Z"},"status":"waitlisted","position":1234}}}')


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Redis:
    def __init__(self):
        host = os.environ.get("REDIS_HOST", "127.0.0.1")
        self.sock = socket.create_connection((host, int(os.environ.get("REDIS_PORT", "6379"))))
        self.file = self.sock.makefile("rb")

    def read(self):
        line = self.file.readline()
        kind = line[:1]
        if kind == b"-":
            raise RuntimeError(line.decode().strip())
        if kind in (b"+", b":"):
            return line[1:].strip()
        if kind == b"$":
            n = int(line[1:])
            return None if n < 0 else self.file.read(n + 2)[:-2]
        return [self.read() for _ in range(max(int(line[1:]), 0))]

    def call(self, *args):
        self.sock.sendall(encode(*args))
        return self.read()


def fields(i):
    return ["outbox_id", i, "message_id", "01a25225-34e2-73c3-8e3c-f8d8926%05d" % (i % 100000),
            "event_type", "joined", "aggregate_id", "01a25225-34e2-73c3-8e3c-f8d8926880b2",
            "stream_version", i, "request_id", "01a25225-34e2-73c3-8e3c-f8d8926880b2",
            "traceparent", "", "committed_at", 1765138800123456 + i, "payload", PAYLOAD]


def redis_ticks():
    pid = os.popen("pgrep -x redis-server").read().split()[0]
    stat = open(f"/proc/{pid}/stat").read().split()
    return int(stat[13]) + int(stat[14])


def turn(redis, how):
    stream, fence = PREFIX + "events", PREFIX + "outbox-relay-fence"
    redis.call("DEL", stream, fence)
    sha = hashlib.sha1(SCRIPT.encode()).hexdigest()
    redis.call("SCRIPT", "LOAD", SCRIPT)
    batches = []
    for b in range(BATCHES):
        rows = range(b * BATCH, (b + 1) * BATCH)
        if how == "script":
            args = ["EVALSHA", sha, 1 + BATCH, fence] + [stream] * BATCH + [10, 1000000]
            for i in rows:
                args += fields(i)
            batches.append(encode(*args))
        else:
            batches.append(b"".join(
                encode("XADD", stream, "MAXLEN", "~", 1000000, "*", *fields(i)) for i in rows))
    before = redis_ticks()
    for batch in batches:
        redis.sock.sendall(batch)
        for _ in range(1 if how == "script" else BATCH):
            redis.read()
    time.sleep(0.2)
    spent = redis_ticks() - before
    added = int(redis.call("XLEN", stream))
    assert added == BATCH * BATCHES, f"{how}: {added} entries"
    redis.call("DEL", stream, fence)
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    return spent * tick / added


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    redis = Redis()
    seen = {"pipeline": [], "script": []}
    for r in range(rounds):
        order = ["pipeline", "script"] if r % 2 == 0 else ["script", "pipeline"]
        for how in order:
            seen[how].append(turn(redis, how))
            print(f"round {r + 1}: {how:8} {seen[how][-1]:.2f} µs of Redis CPU per message", flush=True)
    for how, runs in seen.items():
        runs.sort()
        print(f"{how:8} median {runs[len(runs) // 2]:.2f} µs per message ({', '.join(f'{x:.2f}' for x in runs)})")


main()
