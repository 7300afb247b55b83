// Command server runs the OpenTelemetry Collector's Fluent Forward receiver
// (receiver/fluentforwardreceiver) on -listen, with a consumer that appends every log record
// it is given to -out as one JSON object per line and fsyncs the file before returning. The
// receiver acks a chunk only after the consumer returned nil, so an acked record is on disk.
//
// The receiver maps a Forward record into an OTel log record: the "log" (or "message") field
// becomes the body and every other field an attribute, plus "fluent.tag". The JSON line is
// the attributes with "log" set back from the body and "@time_ns" the event time, which
// recovers the original record's fields.
//
// "listening <addr>" is printed on stdout once the port is bound. SIGTERM or SIGINT stops it.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/collector/receiver/receivertest"
	"go.uber.org/zap"

	"github.com/open-telemetry/opentelemetry-collector-contrib/receiver/fluentforwardreceiver"
)

// jsonLines is the consumer: one JSON line per log record, flushed and fsynced per call.
type jsonLines struct {
	mu   sync.Mutex
	file *os.File
	buf  *bufio.Writer
}

func (j *jsonLines) consume(_ context.Context, logs plog.Logs) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	encoder := json.NewEncoder(j.buf)
	encoder.SetEscapeHTML(false)
	for _, resource := range logs.ResourceLogs().All() {
		for _, scope := range resource.ScopeLogs().All() {
			for _, lr := range scope.LogRecords().All() {
				line := lr.Attributes().AsRaw()
				line["log"] = lr.Body().AsRaw()
				line["@time_ns"] = int64(lr.Timestamp())
				if err := encoder.Encode(line); err != nil {
					return err
				}
			}
		}
	}
	if err := j.buf.Flush(); err != nil {
		return err
	}
	// An error here means no ack: the client must resend, as it would for a real outage.
	return j.file.Sync()
}

func main() {
	listen := flag.String("listen", "127.0.0.1:24224", "TCP host:port to listen on")
	out := flag.String("out", "received.jsonl", "file the received records are appended to")
	debug := flag.Bool("debug", false, "log the receiver's debug messages (connection errors) to stderr")
	flag.Parse()

	file, err := os.OpenFile(*out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sink := &jsonLines{file: file, buf: bufio.NewWriterSize(file, 1<<16)}
	next, err := consumer.NewLogs(sink.consume)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}

	factory := fluentforwardreceiver.NewFactory()
	settings := receivertest.NewNopSettings(factory.Type())
	if *debug {
		// The receiver reports why it closed a connection only at debug level.
		settings.Logger, _ = zap.NewDevelopment()
	}
	config := factory.CreateDefaultConfig().(*fluentforwardreceiver.Config)
	config.ListenAddress = *listen
	ctx := context.Background()
	recv, err := factory.CreateLogs(ctx, settings, config, next)
	if err == nil {
		err = recv.Start(ctx, componenttest.NewNopHost())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening %s\n", *listen)
	os.Stdout.Sync()

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
	err = recv.Shutdown(ctx)
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if closeErr := file.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
