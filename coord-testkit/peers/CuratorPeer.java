// A Curator 5 peer for coord's mixed-fleet tests: runs a LeaderLatch, a LeaderSelector or an
// InterProcessMutex and speaks the contender's line protocol (coord-reliability's `contender`):
// one JSON event per line on stdout ({"t_us":..,"id":..,"ev":"granted","role":..,"token":..}),
// commands on stdin (`resign`, `observe`, `quit`; end of stdin quits, so the peer never
// outlives its test). While leading (holding the lock) it writes its fencing token, the
// ZooKeeper creation zxid of its own node, to the fenced resource every interval.
//
// Usage: CuratorPeer latch|selector|mutex CONNECT PATH ID FENCE_HOST:PORT|- INTERVAL_MS SESSION_MS
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.PrintWriter;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.leader.LeaderSelector;
import org.apache.curator.framework.recipes.leader.LeaderSelectorListenerAdapter;
import org.apache.curator.framework.recipes.leader.Participant;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.state.ConnectionState;
import org.apache.curator.retry.ExponentialBackoffRetry;
import org.apache.zookeeper.data.Stat;

public class CuratorPeer {
    static String id;
    static String path;
    static CuratorFramework client;
    static final LinkedBlockingQueue<String> commands = new LinkedBlockingQueue<>();
    static final AtomicBoolean connectionLost = new AtomicBoolean(false);
    static final AtomicBoolean quitting = new AtomicBoolean(false);
    static Socket fence;
    static BufferedReader fenceIn;
    static PrintWriter fenceOut;
    static String fenceAddr;
    static long interval;

    static long nowUs() {
        return ChronoUnit.MICROS.between(Instant.EPOCH, Instant.now());
    }

    static void emit(String ev, String rest) {
        emitAt(nowUs(), ev, rest);
    }

    static synchronized void emitAt(long t, String ev, String rest) {
        System.out.println("{\"t_us\":" + t + ",\"id\":\"" + id + "\",\"ev\":\"" + ev + "\""
                + (rest.isEmpty() ? "" : "," + rest) + "}");
        System.out.flush();
    }

    static String q(String s) {
        return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
    }

    static void error(String what, Throwable e) {
        emit("error", "\"what\":" + q(what) + ",\"msg\":" + q(String.valueOf(e)));
    }

    /** A new term starts: a `resign` meant for an earlier one is void. */
    /** `since`: when the recipe said we hold the role (before reading our node's czxid). */
    static void granted(String role, long token, long since) {
        commands.removeIf("resign"::equals);
        emitAt(since, "granted", "\"role\":" + q(role) + ",\"token\":" + token);
    }

    static void role(String ev, String role, long token) {
        emit(ev, "\"role\":" + q(role) + ",\"token\":" + token);
    }

    static void write(String role, long token) {
        if (fenceAddr.equals("-")) {
            return; // no fenced resource (the benchmark)
        }
        try {
            if (fence == null) {
                String[] hp = fenceAddr.split(":");
                fence = new Socket(hp[0], Integer.parseInt(hp[1]));
                fence.setSoTimeout(5000);
                fenceIn = new BufferedReader(new InputStreamReader(fence.getInputStream(), StandardCharsets.UTF_8));
                fenceOut = new PrintWriter(new OutputStreamWriter(fence.getOutputStream(), StandardCharsets.UTF_8), true);
            }
            fenceOut.println("W " + id + " " + token);
            String answer = fenceIn.readLine();
            if (answer == null) {
                throw new java.io.EOFException("the fenced resource closed the connection");
            }
            emit("write", "\"role\":" + q(role) + ",\"token\":" + token + ",\"ok\":" + answer.startsWith("OK")
                    + ",\"zombie\":false");
        } catch (Exception e) {
            fence = null;
            error("fence write", e);
        }
    }

    /** Curator's StandardLockInternalsDriver.fixForSorting. */
    static String sortKey(String name, String lockName) {
        int i = name.lastIndexOf(lockName);
        if (i >= 0) {
            i += lockName.length();
            return i <= name.length() ? name.substring(i) : "";
        }
        return name;
    }

    /** The creation zxid of the first node (the holder's), if this session owns it. */
    static long holderToken(String lockName) throws Exception {
        List<String> children = new ArrayList<>(client.getChildren().forPath(path));
        children.sort((a, b) -> sortKey(a, lockName).compareTo(sortKey(b, lockName)));
        if (children.isEmpty()) {
            throw new IllegalStateException("no candidate node");
        }
        Stat st = client.checkExists().forPath(path + "/" + children.get(0));
        long me = client.getZookeeperClient().getZooKeeper().getSessionId();
        if (st == null || st.getEphemeralOwner() != me) {
            throw new IllegalStateException("the first node is not ours");
        }
        return st.getCzxid();
    }

    static void observed(Participant leader, Collection<Participant> all) {
        StringBuilder ps = new StringBuilder();
        for (Participant p : all) {
            if (ps.length() > 0) {
                ps.append(',');
            }
            ps.append(q(p.getId()));
        }
        emit("observed", "\"leader\":" + q(leader.getId()) + ",\"participants\":[" + ps + "]");
    }

    public static void main(String[] args) throws Exception {
        String mode = args[0];
        String connect = args[1];
        path = args[2];
        id = args[3];
        fenceAddr = args[4];
        interval = Long.parseLong(args[5]);
        int sessionMs = Integer.parseInt(args[6]);
        client = CuratorFrameworkFactory.builder().connectString(connect).sessionTimeoutMs(sessionMs)
                .connectionTimeoutMs(5000).retryPolicy(new ExponentialBackoffRetry(50, 10)).build();
        client.getConnectionStateListenable().addListener((c, s) -> {
            if (s == ConnectionState.SUSPENDED || s == ConnectionState.LOST) {
                connectionLost.set(true);
            }
        });
        client.start();
        if (!client.blockUntilConnected(20, TimeUnit.SECONDS)) {
            error("connect", new IllegalStateException("not connected within 20 s"));
            System.exit(1);
        }
        emit("started", "\"pid\":" + ProcessHandle.current().pid());
        Thread worker = new Thread(() -> {
            try {
                switch (mode) {
                    case "latch": latch(); break;
                    case "selector": selector(); break;
                    case "mutex": mutex(); break;
                    default: throw new IllegalArgumentException("unknown mode " + mode);
                }
            } catch (Exception e) {
                error("fatal", e);
            }
            emit("exiting", "");
            System.out.flush();
            Runtime.getRuntime().halt(0);
        });
        worker.start();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            line = line.trim();
            if (line.equals("observe")) {
                observeNow(mode);
                continue;
            }
            if (line.equals("quit")) {
                break;
            }
            commands.add(line);
        }
        quitting.set(true);
        commands.add("quit");
        worker.join(10000);
        Runtime.getRuntime().halt(0);
    }

    static volatile LeaderLatch currentLatch;
    static volatile LeaderSelector currentSelector;

    static void observeNow(String mode) {
        try {
            if (currentLatch != null) {
                observed(currentLatch.getLeader(), currentLatch.getParticipants());
            } else if (currentSelector != null) {
                observed(currentSelector.getLeader(), currentSelector.getParticipants());
            } else {
                error("observe", new IllegalStateException("nothing to observe in mode " + mode));
            }
        } catch (Exception e) {
            error("observe", e);
        }
    }

    /** A LeaderLatch per term: campaign, lead until `resign` (close) or a loss, again. */
    static void latch() throws Exception {
        while (true) {
            LeaderLatch latch = new LeaderLatch(client, path, id);
            currentLatch = latch;
            emit("campaigning", "\"role\":\"election\"");
            latch.start();
            while (!latch.await(interval, TimeUnit.MILLISECONDS)) {
                if (quitting.get()) {
                    latch.close();
                    return;
                }
            }
            long since = nowUs();
            long token = client.checkExists().forPath(latch.getOurPath()).getCzxid();
            granted("election", token, since);
            String cmd;
            while (true) {
                if (!latch.hasLeadership()) {
                    role("lost", "election", token);
                    cmd = "lost";
                    break;
                }
                write("election", token);
                cmd = commands.poll(interval, TimeUnit.MILLISECONDS);
                if ("resign".equals(cmd) || "quit".equals(cmd)) {
                    role("releasing", "election", token);
                    break;
                }
            }
            try {
                latch.close();
            } catch (Exception e) {
                error("close", e);
            }
            if ("quit".equals(cmd)) {
                return;
            }
        }
    }

    /** A LeaderSelector that requeues itself: takeLeadership runs until `resign` or a loss. */
    static void selector() throws Exception {
        AtomicBoolean quit = new AtomicBoolean(false);
        LeaderSelector sel = new LeaderSelector(client, path, new LeaderSelectorListenerAdapter() {
            @Override
            public void takeLeadership(CuratorFramework c) throws Exception {
                long since = nowUs();
                long token = holderToken("lock-");
                granted("election", token, since);
                try {
                    while (true) {
                        write("election", token);
                        String cmd = commands.poll(interval, TimeUnit.MILLISECONDS);
                        if ("resign".equals(cmd) || "quit".equals(cmd)) {
                            role("releasing", "election", token);
                            quit.set("quit".equals(cmd));
                            return;
                        }
                    }
                } catch (InterruptedException e) {
                    role("lost", "election", token);
                    throw e;
                } finally {
                    if (!quit.get()) {
                        emit("campaigning", "\"role\":\"election\"");
                    }
                }
            }
        });
        sel.setId(id);
        sel.autoRequeue();
        currentSelector = sel;
        emit("campaigning", "\"role\":\"election\"");
        sel.start();
        // The leader's thread takes the commands; a quit while not leading ends here.
        while (!quit.get() && !(quitting.get() && !sel.hasLeadership())) {
            Thread.sleep(interval);
        }
        sel.close();
    }

    /** An InterProcessMutex loop: lock, write three times (or until `resign`), unlock, again. */
    static void mutex() throws Exception {
        InterProcessMutex m = new InterProcessMutex(client, path);
        while (true) {
            emit("campaigning", "\"role\":\"lock\"");
            connectionLost.set(false);
            if (!m.acquire(3, TimeUnit.SECONDS)) {
                if (quitting.get()) {
                    return;
                }
                continue;
            }
            long since = nowUs();
            long token = holderToken("lock-");
            granted("lock", token, since);
            String cmd = null;
            boolean lost = false;
            for (int i = 0; i < 3; i++) {
                if (connectionLost.get()) {
                    role("lost", "lock", token);
                    lost = true;
                    break;
                }
                write("lock", token);
                cmd = commands.poll(interval, TimeUnit.MILLISECONDS);
                if ("resign".equals(cmd) || "quit".equals(cmd)) {
                    break;
                }
            }
            if (!lost) {
                role("releasing", "lock", token);
            }
            try {
                m.release();
            } catch (Exception e) {
                error("release", e);
            }
            if ("quit".equals(cmd)) {
                return;
            }
            Thread.sleep(interval);
        }
    }
}
