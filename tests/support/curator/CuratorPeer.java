// A small Apache Curator 5.4 program for tenure's interop tests: it takes one of Curator's own
// recipes (InterProcessMutex, the read or write half of InterProcessReadWriteLock,
// InterProcessSemaphoreV2, LeaderLatch) on a path, on a real ZooKeeper, while tenure contends for
// the same path.
//
// Built by scripts/build-curator-peer.sh against Debian's jars; run through the launcher it
// prints:
//
//   curator-peer CONNECT RECIPE PATH [options]
//
//   RECIPE   mutex | read | write | semaphore | latch
//   options  --max-leases N   semaphore size (default 1)
//            --id ID          LeaderLatch participant id; data of the other recipes' nodes
//            --auto           acquire at once (default: wait for an `acquire` line)
//            --timeout-ms N   acquire waits at most N ms (default: no limit; `--auto` only)
//            --hold-ms N      release N ms after acquiring (default: wait for `release`)
//            --exit           exit after the first release (with --auto, a one-shot holder)
//            --session-timeout-ms N   (default 4000)
//
// Commands, one per line on stdin:
//   acquire [TIMEOUT_MS]   acquire (LeaderLatch: start and await leadership)
//   release                release (LeaderLatch: close)
//   quit                   release if held, close the client, exit; so does end of input
//                          (after a pending --hold-ms release)
//
// Events, one per line on stdout, each with the wall-clock time in microseconds since the
// epoch (the same clock as Rust's SystemTime on this machine):
//   READY <us> <session id in hex>
//   ACQUIRING <us>            about to call acquire (the node is created right after)
//   ACQUIRED <us>             acquire returned, holding (LeaderLatch: leadership taken)
//   TIMEOUT <us>              acquire gave up
//   RELEASING <us>            about to release: from here on, no longer inside
//   RELEASED <us>             release returned
//   LEADER <us>               LeaderLatch: leadership taken (also again after RECONNECTED)
//   NOTLEADER <us>            LeaderLatch: leadership lost (e.g. SUSPENDED)
//   STATE <us> <state>        a connection state change (SUSPENDED, LOST, RECONNECTED, ...)
//   ERROR <us> <message>      a failure; the peer exits with status 1
//   BYE <us>                  exiting
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.leader.LeaderLatchListener;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.recipes.locks.InterProcessReadWriteLock;
import org.apache.curator.framework.recipes.locks.InterProcessSemaphoreV2;
import org.apache.curator.framework.recipes.locks.Lease;
import org.apache.curator.retry.RetryNTimes;

public final class CuratorPeer {
    private final CuratorFramework client;
    private final String recipe;
    private final String path;
    private final int maxLeases;
    private final String id;
    private final long holdMs;
    private final boolean exitAfterRelease;
    private final ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor(r -> {
        Thread t = new Thread(r, "curator-peer-timer");
        t.setDaemon(true);
        return t;
    });

    // The current holding; touched only by the main thread, which makes every recipe call.
    private InterProcessMutex mutex;
    private InterProcessSemaphoreV2 semaphore;
    private Lease lease;
    private LeaderLatch latch;
    private volatile boolean held;
    private ScheduledFuture<?> autoRelease;
    // Commands for the owner thread (main), from stdin and the auto-release timer.
    private final java.util.concurrent.BlockingQueue<String> commands =
        new java.util.concurrent.LinkedBlockingQueue<>();

    private CuratorPeer(CuratorFramework client, String recipe, String path, int maxLeases, String id,
                        long holdMs, boolean exitAfterRelease) {
        this.client = client;
        this.recipe = recipe;
        this.path = path;
        this.maxLeases = maxLeases;
        this.id = id;
        this.holdMs = holdMs;
        this.exitAfterRelease = exitAfterRelease;
    }

    static long micros() {
        return ChronoUnit.MICROS.between(Instant.EPOCH, Instant.now());
    }

    static synchronized void event(String kind, String rest) {
        StringBuilder b = new StringBuilder(kind).append(' ').append(micros());
        if (rest != null && !rest.isEmpty()) {
            b.append(' ').append(rest);
        }
        System.out.println(b);
        System.out.flush();
    }

    static void fail(String message, Throwable e) {
        String text = message + (e == null ? "" : ": " + e);
        event("ERROR", text.replace('\n', ' '));
        if (e != null) {
            e.printStackTrace();
        }
        System.exit(1);
    }

    private byte[] nodeData() {
        return id.getBytes(StandardCharsets.UTF_8);
    }

    /** Acquires; `timeoutMs < 0` waits without limit. Returns whether it is now held. */
    boolean acquire(long timeoutMs) throws Exception {
        if (held) {
            fail("acquire while already holding", null);
        }
        event("ACQUIRING", null);
        boolean ok;
        switch (recipe) {
            case "mutex":
            case "read":
            case "write": {
                if (mutex == null) {
                    if (recipe.equals("mutex")) {
                        mutex = new InterProcessMutex(client, path);
                    } else {
                        InterProcessReadWriteLock rw = new InterProcessReadWriteLock(client, path, nodeData());
                        mutex = recipe.equals("read") ? rw.readLock() : rw.writeLock();
                    }
                }
                if (timeoutMs < 0) {
                    mutex.acquire();
                    ok = true;
                } else {
                    ok = mutex.acquire(timeoutMs, TimeUnit.MILLISECONDS);
                }
                break;
            }
            case "semaphore": {
                if (semaphore == null) {
                    semaphore = new InterProcessSemaphoreV2(client, path, maxLeases);
                    semaphore.setNodeData(nodeData());
                }
                lease = timeoutMs < 0 ? semaphore.acquire() : semaphore.acquire(timeoutMs, TimeUnit.MILLISECONDS);
                ok = lease != null;
                break;
            }
            case "latch": {
                latch = new LeaderLatch(client, path, id);
                latch.addListener(new LeaderLatchListener() {
                    @Override
                    public void isLeader() {
                        // Reported as LEADER, also while acquire() still awaits; ACQUIRED
                        // follows once await returns. (No lock here: acquire holds the peer's
                        // monitor while it awaits, and Curator calls this on its own thread.)
                        event("LEADER", null);
                    }

                    @Override
                    public void notLeader() {
                        event("NOTLEADER", null);
                    }
                });
                latch.start();
                if (timeoutMs < 0) {
                    latch.await();
                    ok = true;
                } else {
                    ok = latch.await(timeoutMs, TimeUnit.MILLISECONDS);
                }
                if (!ok) {
                    latch.close();
                    latch = null;
                }
                break;
            }
            default:
                throw new IllegalArgumentException("unknown recipe " + recipe);
        }
        if (!ok) {
            event("TIMEOUT", null);
            return false;
        }
        held = true;
        event("ACQUIRED", null);
        if (holdMs >= 0) {
            // Curator's locks belong to the thread that took them: the timer only queues the
            // release for the owner thread.
            autoRelease = timer.schedule(() -> commands.add(exitAfterRelease ? "quit" : "release"),
                holdMs, TimeUnit.MILLISECONDS);
        }
        return true;
    }

    void release() throws Exception {
        if (!held) {
            return;
        }
        if (autoRelease != null) {
            autoRelease.cancel(false);
            autoRelease = null;
        }
        event("RELEASING", null);
        held = false;
        switch (recipe) {
            case "semaphore":
                lease.close();
                lease = null;
                break;
            case "latch":
                latch.close();
                latch = null;
                break;
            default:
                mutex.release();
                break;
        }
        event("RELEASED", null);
    }

    void quit() {
        try {
            release();
        } catch (Exception e) {
            event("ERROR", ("release on quit failed: " + e).replace('\n', ' '));
        }
        client.close();
        event("BYE", null);
        System.exit(0);
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: CuratorPeer CONNECT mutex|read|write|semaphore|latch PATH [--max-leases N]"
                + " [--id ID] [--auto] [--timeout-ms N] [--hold-ms N] [--exit] [--session-timeout-ms N]");
            System.exit(2);
        }
        String connect = args[0];
        String recipe = args[1];
        String path = args[2];
        int maxLeases = 1;
        String id = "curator-peer-" + ProcessHandle.current().pid();
        boolean auto = false;
        long timeoutMs = -1;
        long holdMs = -1;
        boolean exitAfterRelease = false;
        int sessionTimeoutMs = 4000;
        for (int i = 3; i < args.length; i++) {
            switch (args[i]) {
                case "--max-leases": maxLeases = Integer.parseInt(args[++i]); break;
                case "--id": id = args[++i]; break;
                case "--auto": auto = true; break;
                case "--timeout-ms": timeoutMs = Long.parseLong(args[++i]); break;
                case "--hold-ms": holdMs = Long.parseLong(args[++i]); break;
                case "--exit": exitAfterRelease = true; break;
                case "--session-timeout-ms": sessionTimeoutMs = Integer.parseInt(args[++i]); break;
                default:
                    System.err.println("unknown option " + args[i]);
                    System.exit(2);
            }
        }
        switch (recipe) {
            case "mutex": case "read": case "write": case "semaphore": case "latch": break;
            default:
                System.err.println("unknown recipe " + recipe);
                System.exit(2);
        }

        CuratorFramework client = CuratorFrameworkFactory.newClient(
            connect, sessionTimeoutMs, Math.max(1000, sessionTimeoutMs / 2), new RetryNTimes(10, 200));
        client.getConnectionStateListenable().addListener((c, state) -> event("STATE", state.name()));
        client.start();
        if (!client.blockUntilConnected(30, TimeUnit.SECONDS)) {
            fail("could not connect to " + connect, null);
        }
        String session = Long.toHexString(client.getZookeeperClient().getZooKeeper().getSessionId());
        CuratorPeer peer = new CuratorPeer(client, recipe, path, maxLeases, id, holdMs, exitAfterRelease);
        event("READY", "0x" + session);

        // stdin is read on its own thread; every recipe call happens on this (main) thread.
        Thread reader = new Thread(() -> {
            try {
                BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
                String line;
                while ((line = in.readLine()) != null) {
                    peer.commands.add(line.trim());
                }
            } catch (Exception e) {
                event("ERROR", ("reading stdin: " + e).replace('\n', ' '));
            }
            peer.commands.add("eof");
        }, "curator-peer-stdin");
        reader.setDaemon(true);
        reader.start();
        try {
            if (auto) {
                peer.acquire(timeoutMs);
                if (exitAfterRelease && !peer.held) {
                    peer.quit();
                }
            }
            boolean eof = false;
            while (true) {
                String line = peer.commands.take();
                String[] words = line.split("\\s+");
                switch (words[0]) {
                    case "":
                        break;
                    case "acquire":
                        peer.acquire(words.length > 1 ? Long.parseLong(words[1]) : -1);
                        break;
                    case "release":
                        peer.release();
                        if (exitAfterRelease) {
                            peer.quit();
                        }
                        break;
                    case "eof":
                        // End of input: a holding with --hold-ms still runs its course.
                        eof = true;
                        if (!peer.held || peer.autoRelease == null) {
                            peer.quit();
                        }
                        break;
                    case "quit":
                        peer.quit();
                        break;
                    default:
                        event("ERROR", "unknown command " + words[0]);
                }
                if (eof && !peer.held) {
                    peer.quit();
                }
            }
        } catch (Exception e) {
            fail("failed", e);
        }
    }

}
