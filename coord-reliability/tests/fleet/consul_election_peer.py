#!/usr/bin/python3
"""A candidate of Consul's leader-election guide, step by step over the HTTP API (Python's
standard library only), as an application following the guide would run it:

1. create a session (`PUT /v1/session/create`, a TTL renewed by a thread);
2. `PUT /v1/kv/<key>?acquire=<session>` with the candidate's value (flags 0);
3. if refused, block on the key (`GET ?index=`) until it has no `Session`, then go to 2;
4. once the key is ours, print `HELD <session>` and block on the key until its `Session` is
   not ours any more (then print `LOST` and exit 1);
5. on SIGTERM, `PUT ?release=<session>`, destroy the session and exit 0.

usage: consul_election_peer.py HOST:PORT KEY VALUE [TTL] [LOCK_DELAY]
"""
import json
import signal
import sys
import threading
import urllib.error
import urllib.request

addr, key, value = sys.argv[1], sys.argv[2], sys.argv[3]
ttl = sys.argv[4] if len(sys.argv) > 4 else "10s"
lock_delay = sys.argv[5] if len(sys.argv) > 5 else "15s"


def call(method, path, body=None, timeout=30):
    req = urllib.request.Request("http://%s%s" % (addr, path), data=body, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read(), int(resp.headers.get("X-Consul-Index") or 0)


def entry(index):
    """The key (None if absent) and the index, blocking from `index` if it is not 0."""
    q = "?index=%d&wait=5s" % index if index else ""
    try:
        body, idx = call("GET", "/v1/kv/%s%s" % (key, q))
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None, int(e.headers.get("X-Consul-Index") or 0)
        raise
    return json.loads(body)[0], idx


body = json.dumps({"Name": "guide-peer", "TTL": ttl, "LockDelay": lock_delay}).encode()
session = json.loads(call("PUT", "/v1/session/create", body)[0])["ID"]


def renew():
    secs = float(ttl.rstrip("s")) / 3
    while not stopping.wait(secs):
        try:
            call("PUT", "/v1/session/renew/%s" % session)
        except Exception:  # the next round tries again; the TTL decides
            pass


stopping = threading.Event()
threading.Thread(target=renew, daemon=True).start()


def on_term(_sig, _frame):
    stopping.set()
    try:
        call("PUT", "/v1/kv/%s?release=%s" % (key, session), b"")
        call("PUT", "/v1/session/destroy/%s" % session)
    finally:
        sys.exit(0)


signal.signal(signal.SIGTERM, on_term)

index = 0
while True:
    got = json.loads(call("PUT", "/v1/kv/%s?acquire=%s" % (key, session), value.encode())[0])
    if got:
        print("HELD %s" % session, flush=True)
        e, index = entry(0)
        while e is not None and e.get("Session") == session:
            e, index = entry(index)
        print("LOST", flush=True)
        sys.exit(1)
    # Somebody holds it (or a lock-delay): wait until the key has no session.
    e, index = entry(0)
    while e is not None and e.get("Session"):
        e, index = entry(index)
