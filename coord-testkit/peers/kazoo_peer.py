"""A kazoo peer for coord's mixed-fleet tests (run with Debian's /usr/bin/python3 and its
python3-kazoo): a kazoo Election or Lock speaking the contender's line protocol
(coord-reliability's `contender`): one JSON event per line on stdout, commands on stdin
(`resign`, `observe`, `quit`; end of stdin quits, so the peer never outlives its test). While
leading (holding the lock) it writes its fencing token, the ZooKeeper creation zxid of its own
node, to the fenced resource every interval.

Usage: kazoo_peer.py election|lock CONNECT PATH ID FENCE_HOST:PORT|- INTERVAL_MS SESSION_MS
"""

import json
import os
import queue
import socket
import sys
import threading
import time

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import CancelledError

mode, connect, path, ident, fence_addr, interval_ms, session_ms = sys.argv[1:8]
interval = int(interval_ms) / 1000.0
commands = queue.Queue()
quitting = threading.Event()
lost_flag = threading.Event()
out_lock = threading.Lock()


def emit(ev, t_us=None, **rest):
    rec = {"t_us": t_us or time.time_ns() // 1000, "id": ident, "ev": ev}
    rec.update(rest)
    with out_lock:
        sys.stdout.write(json.dumps(rec) + "\n")
        sys.stdout.flush()


def error(what, e):
    emit("error", what=what, msg=repr(e))


class Fence:
    def __init__(self, addr):
        self.conn = None
        self.addr = None
        if addr != "-":
            host, port = addr.rsplit(":", 1)
            self.addr = (host, int(port))

    def write(self, role, token):
        if self.addr is None:
            return  # no fenced resource (the benchmark)
        try:
            if self.conn is None:
                s = socket.create_connection(self.addr, timeout=5)
                self.conn = (s, s.makefile("rw"))
            f = self.conn[1]
            f.write("W %s %d\n" % (ident, token))
            f.flush()
            answer = f.readline()
            if not answer:
                raise EOFError("the fenced resource closed the connection")
            emit("write", role=role, token=token, ok=answer.startswith("OK"), zombie=False)
        except Exception as e:  # noqa: BLE001 - reported, the peer carries on
            self.conn = None
            error("fence write", e)


fence = Fence(fence_addr)
zk = KazooClient(hosts=connect, timeout=int(session_ms) / 1000.0)


def on_state(state):
    if state in (KazooState.SUSPENDED, KazooState.LOST):
        lost_flag.set()


zk.add_listener(on_state)
zk.start(timeout=20)
emit("started", pid=os.getpid())
role = "election" if mode == "election" else "lock"
lock = zk.Lock(path, ident)


def own_token():
    st = zk.exists(path + "/" + lock.node)
    return st.czxid


def next_command(timeout):
    try:
        return commands.get(timeout=timeout)
    except queue.Empty:
        return None


def drain_resigns():
    kept = []
    while True:
        try:
            c = commands.get_nowait()
        except queue.Empty:
            break
        if c != "resign":
            kept.append(c)
    for c in kept:
        commands.put(c)


def hold(token, max_writes):
    """Writes while holding; returns the command that ended the term (None: lost/done)."""
    writes = 0
    while True:
        if lost_flag.is_set():
            emit("lost", role=role, token=token)
            return "lost"
        fence.write(role, token)
        writes += 1
        cmd = next_command(interval)
        if cmd in ("resign", "quit"):
            emit("releasing", role=role, token=token)
            return cmd
        if max_writes and writes >= max_writes:
            emit("releasing", role=role, token=token)
            return None


def worker():
    try:
        while not quitting.is_set():
            emit("campaigning", role=role)
            lost_flag.clear()
            # kazoo's Election.run is this same Lock held while the function runs; the lock
            # form lets the term end on a command.
            if not lock.acquire(timeout=3 if mode == "lock" else None):
                continue
            since = time.time_ns() // 1000  # before reading our node's czxid
            drain_resigns()
            token = own_token()
            emit("granted", t_us=since, role=role, token=token)
            cmd = hold(token, 3 if mode == "lock" else 0)
            try:
                lock.release()
            except Exception as e:  # noqa: BLE001
                error("release", e)
            if cmd == "quit":
                break
            if mode == "lock":
                time.sleep(interval)
    except CancelledError:
        pass  # quit while waiting: lock.cancel() ends the wait
    except Exception as e:  # noqa: BLE001
        error("fatal", e)
    emit("exiting")
    os._exit(0)


threading.Thread(target=worker, daemon=True).start()
for line in sys.stdin:
    line = line.strip()
    if line == "observe":
        try:
            contenders = lock.contenders()
            emit("observed", leader=contenders[0] if contenders else "", participants=contenders)
        except Exception as e:  # noqa: BLE001
            error("observe", e)
        continue
    if line == "quit":
        break
    commands.put(line)
quitting.set()
commands.put("quit")
try:
    lock.cancel()
except Exception:  # noqa: BLE001
    pass
time.sleep(10)
os._exit(0)
