// Command client sends container-style records to a Forward Protocol server with
// github.com/IBM/fluent-forward-go, one ack-required message at a time, in the carrier mode
// chosen by -mode. It exits 0 only if every message was acked; errors go to stderr.
//
// It is a separate binary from ../server: fluent-forward-go and the OpenTelemetry fluentforward
// receiver both register msgpack extension type 0 for EventTime in an init function, and
// tinylib/msgp panics on the second registration, so the two cannot share one binary.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/IBM/fluent-forward-go/fluent/client"
	"github.com/IBM/fluent-forward-go/fluent/protocol"
)

// modes maps -mode to the library constructor(s) for one batch of records: one message per
// record in the Message modes, one message per batch otherwise. Client.Send then asks for and
// waits on each message's ack because the client is built with RequireAck.
var modes = map[string]func(tag string, batch []map[string]any) ([]protocol.ChunkEncoder, error){
	// [tag, int seconds, record, {chunk}]
	"message": func(tag string, batch []map[string]any) ([]protocol.ChunkEncoder, error) {
		out := make([]protocol.ChunkEncoder, len(batch))
		for i, record := range batch {
			out[i] = protocol.NewMessage(tag, record)
		}
		return out, nil
	},
	// [tag, EventTime, record, {chunk}]
	"message-ext": func(tag string, batch []map[string]any) ([]protocol.ChunkEncoder, error) {
		out := make([]protocol.ChunkEncoder, len(batch))
		for i, record := range batch {
			out[i] = protocol.NewMessageExt(tag, record)
		}
		return out, nil
	},
	// [tag, [[EventTime, record]...], {size, chunk}]
	"forward": func(tag string, batch []map[string]any) ([]protocol.ChunkEncoder, error) {
		return []protocol.ChunkEncoder{protocol.NewForwardMessage(tag, entries(batch))}, nil
	},
	// [tag, bin(entries), {size, chunk}]
	"packed": func(tag string, batch []map[string]any) ([]protocol.ChunkEncoder, error) {
		return one(protocol.NewPackedForwardMessage(tag, entries(batch)))
	},
	// [tag, bin(entries), {chunk}]: the FromBytes variant sets no size option.
	"packed-bytes": func(tag string, batch []map[string]any) ([]protocol.ChunkEncoder, error) {
		raw, err := entries(batch).MarshalPacked()
		return one(protocol.NewPackedForwardMessageFromBytes(tag, raw), err)
	},
	// [tag, bin(gzip(entries)), {size, chunk, compressed: "gzip"}]
	"compressed": func(tag string, batch []map[string]any) ([]protocol.ChunkEncoder, error) {
		return one(protocol.NewCompressedPackedForwardMessage(tag, entries(batch)))
	},
	// [tag, bin(gzip(entries)), {chunk, compressed: "gzip"}]: no size option.
	"compressed-bytes": func(tag string, batch []map[string]any) ([]protocol.ChunkEncoder, error) {
		raw, err := entries(batch).MarshalPacked()
		if err != nil {
			return nil, err
		}
		return one(protocol.NewCompressedPackedForwardMessageFromBytes(tag, raw))
	},
}

func one(msg *protocol.PackedForwardMessage, err error) ([]protocol.ChunkEncoder, error) {
	return []protocol.ChunkEncoder{msg}, err
}

func entries(batch []map[string]any) protocol.EntryList {
	out := make(protocol.EntryList, len(batch))
	for i, record := range batch {
		out[i] = protocol.EntryExt{Timestamp: protocol.EventTimeNow(), Record: record}
	}
	return out
}

// texts vary the log line: quotes, escapes, tabs, non-ASCII, JSON-looking and long text.
var texts = []string{
	"GET /checkout 200 12ms",
	`said "hello" \ back`,
	"tab\tseparated\tfields",
	"caf\u00e9 \u2713 \u65e5\u672c\u8a9e \U0001F680",
	`{"level":"warn","msg":"json inside a log line"}`,
	strings.Repeat("long-", 300),
	"",
}

func record(i int, namespace string) map[string]any {
	return map[string]any{
		"log":    fmt.Sprintf("go-peer line %d: %s", i, texts[i%len(texts)]),
		"stream": "stdout",
		"seq":    i,
		"kubernetes": map[string]any{
			"namespace_name": namespace,
			"pod_name":       "go-0",
			"container_name": "app",
			"host":           "go-peer",
		},
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:24224", "server host:port")
	mode := flag.String("mode", "forward", "message|message-ext|forward|packed|packed-bytes|compressed|compressed-bytes")
	count := flag.Int("n", 1000, "records to send")
	batchSize := flag.Int("batch", 100, "records per message (message modes send one per message)")
	namespace := flag.String("namespace", "go-peer", "kubernetes.namespace_name of every record")
	tag := flag.String("tag", "kube.go-peer", "Forward Protocol tag")
	timeout := flag.Duration("timeout", 10*time.Second, "dial timeout and wait for each ack")
	retries := flag.Int("retries", 0, "resends of a message whose ack did not come, on a new connection")
	flag.Parse()

	build, ok := modes[*mode]
	if !ok || *count < 0 || *batchSize < 1 {
		fmt.Fprintf(os.Stderr, "bad flags: mode=%q n=%d batch=%d\n", *mode, *count, *batchSize)
		os.Exit(2)
	}
	c := client.New(client.ConnectionOptions{
		Factory:           &client.ConnFactory{Network: "tcp", Address: *addr, Timeout: *timeout},
		RequireAck:        true,
		ConnectionTimeout: *timeout, // the library's read deadline for each ack
	})
	if err := c.Connect(); err != nil {
		fmt.Fprintf(os.Stderr, "connect %s: %v\n", *addr, err)
		os.Exit(1)
	}
	defer c.Disconnect()

	sent, messages, resends := 0, 0, 0
	for start := 0; start < *count; start += *batchSize {
		end := min(start+*batchSize, *count)
		batch := make([]map[string]any, 0, end-start)
		for i := start; i < end; i++ {
			batch = append(batch, record(i, *namespace))
		}
		msgs, err := build(*tag, batch)
		for _, msg := range msgs {
			if err != nil {
				break
			}
			// A resend is the same message object: its chunk id (made on the first Send) and
			// event times are kept, as a real client's retry of an unacked chunk would.
			err = c.Send(msg)
			for try := 0; err != nil && try < *retries; try++ {
				fmt.Fprintf(os.Stderr, "records %d..%d not acked (%v): resending\n", start, end-1, err)
				resends++
				if err = c.Reconnect(); err == nil {
					err = c.Send(msg)
				}
			}
			messages++
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "mode %s: records %d..%d not acked: %v\n", *mode, start, end-1, err)
			os.Exit(1)
		}
		sent = end
	}
	// One summary line on stdout for the test; Send returned only after each ack.
	summary, _ := json.Marshal(map[string]any{
		"mode": *mode, "records": sent, "messages": messages, "resends": resends,
	})
	fmt.Println(string(summary))
}
