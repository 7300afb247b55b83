import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.komamitsu.fluency.EventTime;
import org.komamitsu.fluency.Fluency;
import org.komamitsu.fluency.fluentd.FluencyBuilderForFluentd;

/**
 * Sends COUNT container-log records to a Forward Protocol server through Fluency, the
 * third-party Java client, for logferry's interoperability tests (tests/support/fluency_peer.py
 * builds and runs it).
 *
 * <pre>FluencySend HOST PORT COUNT TAG NAMESPACE [--no-ack] [--chunk-bytes N]</pre>
 *
 * Fluency 2.7 only speaks PackedForward (it has no compression setting). With ack response
 * mode (the default here) every message carries a `chunk` option and Fluency waits for the
 * server's ack before it counts the buffer as sent. Exits 0 only if every buffer was flushed
 * and Fluency reported no error; otherwise prints why to stderr and exits 1 (2 for bad usage).
 */
public final class FluencySend {
  private static final int FLUSH_TIMEOUT_S = 30;
  private static final int TERMINATE_TIMEOUT_S = 10;

  public static void main(String[] args) throws Exception {
    // Fluency logs each failed attempt through SLF4J; warnings are the ones worth seeing.
    System.setProperty(
        "org.slf4j.simpleLogger.defaultLogLevel",
        System.getProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn"));
    if (args.length < 5) {
      usage("missing arguments");
    }
    String host = args[0];
    int port = Integer.parseInt(args[1]);
    int count = Integer.parseInt(args[2]);
    String tag = args[3];
    String namespace = args[4];
    boolean ack = true;
    int chunkBytes = 64 * 1024;
    for (int i = 5; i < args.length; i++) {
      switch (args[i]) {
        case "--no-ack" -> ack = false;
        case "--chunk-bytes" -> {
          if (++i >= args.length) {
            usage("--chunk-bytes needs a value");
          }
          chunkBytes = Integer.parseInt(args[i]);
        }
        default -> usage("unknown option " + args[i]);
      }
    }

    List<Throwable> errors = Collections.synchronizedList(new ArrayList<>());
    FluencyBuilderForFluentd builder = new FluencyBuilderForFluentd();
    builder.setAckResponseMode(ack);
    // Small buffer chunks: COUNT records leave as several messages (several acks), not one.
    builder.setBufferChunkInitialSize(chunkBytes / 2); // must be below the retention size
    builder.setBufferChunkRetentionSize(chunkBytes);
    // Fail within seconds rather than Fluency's default of ~50 s of retries.
    builder.setSenderMaxRetryCount(4);
    builder.setSenderBaseRetryIntervalMillis(200);
    builder.setSenderMaxRetryIntervalMillis(2000);
    builder.setErrorHandler(
        e -> {
          errors.add(e);
          System.err.println("fluency error: " + e);
        });

    long started = System.nanoTime();
    Fluency fluency = builder.build(host, port);
    for (int i = 0; i < count; i++) {
      fluency.emit(tag, EventTime.fromEpochMilli(System.currentTimeMillis()), record(i, namespace));
    }
    fluency.flush();
    boolean flushed = fluency.waitUntilAllBufferFlushed(FLUSH_TIMEOUT_S);
    fluency.close();
    boolean terminated = fluency.waitUntilFlusherTerminated(TERMINATE_TIMEOUT_S);
    long elapsedMs = (System.nanoTime() - started) / 1_000_000;

    if (!flushed) {
      System.err.printf(
          "buffers not flushed within %d s (%d bytes left)%n",
          FLUSH_TIMEOUT_S, fluency.getBufferedDataSize());
    }
    if (!terminated) {
      System.err.printf("flusher still running after %d s%n", TERMINATE_TIMEOUT_S);
    }
    if (!flushed || !terminated || !errors.isEmpty()) {
      System.exit(1);
    }
    System.out.printf("sent %d records (ack=%b) in %d ms%n", count, ack, elapsedMs);
  }

  private static Map<String, Object> record(int i, String namespace) {
    Map<String, Object> kubernetes = new LinkedHashMap<>();
    kubernetes.put("namespace_name", namespace);
    kubernetes.put("pod_name", "fluency-0");
    kubernetes.put("container_name", "app");
    kubernetes.put("host", "java-peer");
    Map<String, Object> record = new LinkedHashMap<>();
    // Varied lengths and some non-ASCII text, so entries are not all alike on the wire.
    String extra = i % 7 == 0 ? " caf\u00e9 \u2713" : "";
    record.put("log", "GET /items/" + i + " 200 " + "x".repeat(i % 40) + extra);
    record.put("stream", "stdout");
    record.put("seq", i);
    record.put("kubernetes", kubernetes);
    return record;
  }

  private static void usage(String problem) {
    System.err.println(
        problem + "\nusage: FluencySend HOST PORT COUNT TAG NAMESPACE [--no-ack] [--chunk-bytes N]");
    System.exit(2);
  }
}
