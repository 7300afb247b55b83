// Starts one real OpenSearch node in this JVM for logferry's tests and `make run`.
//
// Usage: java [-Xms.. -Xmx..] -cp <classpath from pom.xml> Launcher HTTP_PORT BASE_DIR CLUSTER
//            [--watch-stdin]
//            [--seed-hosts HOST:PORT,... --node-name NAME --transport-port PORT
//             [--initial-managers NAME,...]]
//
// Without --seed-hosts the node is a cluster of its own (discovery.type=single-node, new
// indices get no replicas). With --seed-hosts it is one member of a multi-node cluster: it
// finds the others through the seed hosts on their fixed transport ports, and
// --initial-managers names the cluster-manager-eligible nodes that vote in the very first
// election (give it only when the cluster forms for the first time: a node that already has
// cluster state in BASE_DIR ignores it, and OpenSearch advises removing it after).
//
// The node keeps everything under BASE_DIR/node_1/ (config, data, logs): the runner creates
// what is missing and deletes nothing, so a node started again on the same BASE_DIR keeps its
// node id, its cluster membership and its shards.
//
// Prints "READY http://127.0.0.1:PORT" once the cluster is at least yellow. Stops the node
// cleanly on SIGTERM/SIGINT (JVM shutdown hook) and, with --watch-stdin, when stdin reaches
// EOF: the parent holds the only write end of that pipe, so even a SIGKILLed parent leaves no
// orphan JVM behind. Driven by devtools/opensearch_node.py; not meant to be run by hand.

import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;

import org.codelibs.opensearch.runner.OpenSearchRunner;
import org.opensearch.action.admin.cluster.health.ClusterHealthResponse;
import org.opensearch.common.settings.Settings;
import org.opensearch.common.unit.TimeValue;

public final class Launcher {
    private static final String USAGE = "usage: Launcher HTTP_PORT BASE_DIR CLUSTER_NAME [--watch-stdin]"
            + " [--seed-hosts HOST:PORT,... --node-name NAME --transport-port PORT"
            + " [--initial-managers NAME,...]]";

    private Launcher() {}

    /** The command line; {@code seedHosts == null} means a single-node cluster. */
    private static final class Args {
        int httpPort;
        String baseDir;
        String clusterName;
        boolean watchStdin;
        List<String> seedHosts;
        String nodeName;
        int transportPort = -1;
        List<String> initialManagers;
    }

    private static void usage(final String problem) {
        System.err.println(problem);
        System.err.println(USAGE);
        System.exit(2);
    }

    private static List<String> commaList(final String value) {
        final List<String> items = new ArrayList<>();
        for (final String item : value.split(",")) {
            if (!item.isBlank()) {
                items.add(item.trim());
            }
        }
        return items;
    }

    private static Args parse(final String[] argv) {
        if (argv.length < 3) {
            usage("missing HTTP_PORT, BASE_DIR or CLUSTER_NAME");
        }
        final Args args = new Args();
        args.httpPort = Integer.parseInt(argv[0]);
        args.baseDir = argv[1];
        args.clusterName = argv[2];
        for (int i = 3; i < argv.length; i++) {
            final String flag = argv[i];
            if ("--watch-stdin".equals(flag)) {
                args.watchStdin = true;
                continue;
            }
            if (i + 1 >= argv.length) {
                usage("unknown option or missing value: " + flag);
            }
            final String value = argv[++i];
            switch (flag) {
                case "--seed-hosts" -> args.seedHosts = commaList(value);
                case "--node-name" -> args.nodeName = value;
                case "--transport-port" -> args.transportPort = Integer.parseInt(value);
                case "--initial-managers" -> args.initialManagers = commaList(value);
                default -> usage("unknown option: " + flag);
            }
        }
        final boolean clusterOptions = args.nodeName != null || args.transportPort >= 0
                || args.initialManagers != null;
        if (args.seedHosts == null && clusterOptions) {
            usage("--node-name, --transport-port and --initial-managers need --seed-hosts");
        }
        if (args.seedHosts != null && (args.nodeName == null || args.transportPort < 0)) {
            // Both must be stable across restarts: the name is how the initial election
            // finds the node, the port is how the other nodes' seed lists reach it.
            usage("--seed-hosts needs --node-name and --transport-port");
        }
        return args;
    }

    public static void main(final String[] argv) throws Exception {
        final Args args = parse(argv);
        final boolean cluster = args.seedHosts != null;

        // OpenSearch redirects System.out into log4j, which is gone during shutdown; keep the
        // real stream so READY and the shutdown messages reach the caller verbatim.
        final PrintStream out = System.out;
        final OpenSearchRunner runner = new OpenSearchRunner();
        final CountDownLatch closed = new CountDownLatch(1);
        // The hook runs on SIGTERM, SIGINT and System.exit alike, so every way out closes the
        // node (flushes the translog, releases the node lock) before the JVM goes away.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                runner.close();
                out.println("node closed");
            } catch (final IOException | RuntimeException e) {
                out.println("error while closing the node: " + e);
            } finally {
                closed.countDown();
            }
        }, "logferry-shutdown"));

        // Never probe for a port: the caller chose it and must get exactly that one or a failure.
        runner.setMaxHttpPort(-1);
        runner.onBuild((index, settings) -> {
            settings.put("http.port", args.httpPort);
            // Loopback only: a test node must never be reachable from the network.
            settings.put("network.host", "127.0.0.1");
            if (cluster) {
                settings.put("node.name", args.nodeName);
                settings.put("transport.port", args.transportPort);
                settings.putList("discovery.seed_hosts", args.seedHosts);
                if (args.initialManagers != null) {
                    settings.putList("cluster.initial_cluster_manager_nodes", args.initialManagers);
                }
            } else {
                settings.put("discovery.type", "single-node");
            }
            settings.putList("node.roles", "cluster_manager", "data", "ingest");
            // A nearly full CI disk must not turn indices read-only in the middle of a test.
            settings.put("cluster.routing.allocation.disk.threshold_enabled", false);
            // Swapping is irrelevant for a throwaway node and mlockall would need privileges.
            settings.put("bootstrap.memory_lock", false);
        });

        try {
            runner.build(OpenSearchRunner.newConfigs()
                    .basePath(args.baseDir)
                    .numOfNode(1)
                    .clusterName(args.clusterName)
                    .printOnFailure());
            if (cluster) {
                awaitJoined(runner, out);
            } else {
                runner.ensureYellow();
                // Single node: replicas could never be assigned and every new index would stay
                // yellow. This default lives in cluster metadata, so it can't be a node setting;
                // an index's own settings or a template still override it.
                runner.admin().cluster().prepareUpdateSettings()
                        .setPersistentSettings(Settings.builder().put("cluster.default_number_of_replicas", 0))
                        .get();
            }
        } catch (final RuntimeException e) {
            e.printStackTrace(out);
            System.exit(1); // the shutdown hook closes whatever part of the node had started
        }
        out.println("READY http://127.0.0.1:" + args.httpPort);
        out.flush();

        if (args.watchStdin) {
            final InputStream in = System.in;
            final byte[] buf = new byte[256];
            while (in.read(buf) >= 0) {
                // Anything written on stdin is ignored; only EOF matters.
            }
            out.println("stdin closed: shutting down");
            System.exit(0);
        }
        closed.await(); // the node's own threads keep the JVM alive; this just parks main
    }

    /**
     * Returns once this node is in a cluster that is at least yellow.
     *
     * <p>A health request is answered by the elected cluster manager, so an answer also means
     * this node has joined. While the members are still booting there is no manager yet and
     * the request fails with "cluster manager not discovered"; that is the normal state of a
     * forming cluster, not an error, so it is asked again. There is no deadline here: the
     * caller owns it and kills this JVM when it passes.
     */
    private static void awaitJoined(final OpenSearchRunner runner, final PrintStream out) {
        final TimeValue wait = TimeValue.timeValueSeconds(5);
        String lastProblem = null;
        while (true) {
            String problem;
            try {
                final ClusterHealthResponse health = runner.admin().cluster().prepareHealth()
                        .setWaitForYellowStatus()
                        .setTimeout(wait)
                        .setClusterManagerNodeTimeout(wait)
                        .get();
                if (!health.isTimedOut()) {
                    out.println("joined cluster " + health.getClusterName() + ": "
                            + health.getNumberOfNodes() + " nodes, " + health.getStatus());
                    return;
                }
                problem = "cluster is " + health.getStatus() + " with " + health.getNumberOfNodes() + " nodes";
            } catch (final RuntimeException e) {
                if (runner.isClosed()) {
                    throw new IllegalStateException("the node closed before it joined a cluster", e);
                }
                problem = e.getClass().getSimpleName() + ": " + e.getMessage();
                pause(); // most failures wait out the timeout; one that doesn't must not spin
            }
            // Once per change, not once per retry: the log should stay readable.
            if (!problem.equals(lastProblem)) {
                out.println("waiting to join: " + problem);
                lastProblem = problem;
            }
        }
    }

    private static void pause() {
        try {
            Thread.sleep(200);
        } catch (final InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while waiting to join", e);
        }
    }
}
