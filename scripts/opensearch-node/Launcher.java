// Starts one real OpenSearch node in this JVM for logferry's tests and `make run`.
//
// Usage: java [-Xms.. -Xmx..] -cp <classpath from pom.xml> Launcher PORT BASE_DIR CLUSTER [--watch-stdin]
//
// Prints "READY http://127.0.0.1:PORT" once the cluster is at least yellow. Stops the node
// cleanly on SIGTERM/SIGINT (JVM shutdown hook) and, with --watch-stdin, when stdin reaches
// EOF: the parent holds the only write end of that pipe, so even a SIGKILLed parent leaves no
// orphan JVM behind. Driven by devtools/opensearch_node.py; not meant to be run by hand.

import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.util.concurrent.CountDownLatch;

import org.codelibs.opensearch.runner.OpenSearchRunner;
import org.opensearch.common.settings.Settings;

public final class Launcher {
    private Launcher() {}

    public static void main(final String[] args) throws Exception {
        if (args.length < 3 || args.length > 4 || (args.length == 4 && !"--watch-stdin".equals(args[3]))) {
            System.err.println("usage: Launcher PORT BASE_DIR CLUSTER_NAME [--watch-stdin]");
            System.exit(2);
        }
        final int port = Integer.parseInt(args[0]);
        final String baseDir = args[1];
        final String clusterName = args[2];
        final boolean watchStdin = args.length == 4;

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
            settings.put("http.port", port);
            // Loopback only: a test node must never be reachable from the network.
            settings.put("network.host", "127.0.0.1");
            settings.put("discovery.type", "single-node");
            settings.putList("node.roles", "cluster_manager", "data", "ingest");
            // A nearly full CI disk must not turn indices read-only in the middle of a test.
            settings.put("cluster.routing.allocation.disk.threshold_enabled", false);
            // Swapping is irrelevant for a throwaway node and mlockall would need privileges.
            settings.put("bootstrap.memory_lock", false);
        });

        try {
            runner.build(OpenSearchRunner.newConfigs()
                    .basePath(baseDir)
                    .numOfNode(1)
                    .clusterName(clusterName)
                    .printOnFailure());
            runner.ensureYellow();
            // Single node: replicas could never be assigned and every new index would stay
            // yellow. This default lives in cluster metadata, so it can't be a node setting;
            // an index's own settings or a template still override it.
            runner.admin().cluster().prepareUpdateSettings()
                    .setPersistentSettings(Settings.builder().put("cluster.default_number_of_replicas", 0))
                    .get();
        } catch (final RuntimeException e) {
            e.printStackTrace(out);
            System.exit(1); // the shutdown hook closes whatever part of the node had started
        }
        out.println("READY http://127.0.0.1:" + port);
        out.flush();

        if (watchStdin) {
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
}
