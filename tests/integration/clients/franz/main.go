// Command franz is an unmodified franz-go client for the integration tests: it
// produces, consumes and lists the way a Go service would, with franz-go's
// defaults (incremental fetch sessions, idempotent producer), and prints what
// happened as JSON on stdout.
//
//	franz produce  -brokers B -topic T -n N [-value FMT] [-interval D] [-delivery-timeout D] [-timeout D]
//	    {"acked", "failed", "errors": {text: count}, "connect_errors": {text: count}, "read_errors": {...}}
//	franz consume  -brokers B -topic T -group G -n N [-timeout D]
//	    prints {"ready": true} once the group assigned it partitions and three
//	    fetches came back (so later fetches are incremental), then
//	    {"values": [...], "errors": [...]}; it stops at the first error that
//	    franz-go itself would not retry
//	franz metadata -brokers B [-timeout D]
//	    {"topics": [every topic the Metadata answer for "all topics" named], "errors": [...]}
//
// Every mode also takes SASL flags (auth.go): -sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 with
// -sasl-username and -sasl-password, or -sasl-mechanism OAUTHBEARER with -oauth-token-endpoint,
// -oauth-client-id and -oauth-client-secret. A refused login is one of the summary's errors.
//
// Every mode stops after -timeout, so no invocation can hang a test.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: franz produce|consume|metadata [flags]")
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	brokers := fs.String("brokers", "", "comma-separated seed brokers")
	topic := fs.String("topic", "", "topic")
	group := fs.String("group", "", "consumer group")
	n := fs.Int("n", 1, "records to produce or consume")
	value := fs.String("value", "franz-%d", "value format; %d is the record's index")
	interval := fs.Duration("interval", 0, "pause between produced records")
	delivery := fs.Duration("delivery-timeout", 20*time.Second, "franz-go's RecordDeliveryTimeout")
	timeout := fs.Duration("timeout", 30*time.Second, "stop after this long whatever happened")
	auth := registerAuthFlags(fs)
	tlsCA := fs.String("tls-ca", "", "speak TLS, trusting the CAs in this PEM file (hostname checked)")
	_ = fs.Parse(os.Args[2:])
	if *brokers == "" {
		fail("-brokers is required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	authOpts, err := auth.opts()
	if err != nil {
		fail(err.Error())
	}
	seeds := append([]kgo.Opt{kgo.SeedBrokers(strings.Split(*brokers, ",")...)}, authOpts...)
	if *tlsCA != "" {
		pem, err := os.ReadFile(*tlsCA)
		if err != nil {
			fail(err.Error())
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fail(*tlsCA + ": no PEM certificate in it")
		}
		seeds = append(seeds, kgo.DialTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	}
	switch mode {
	case "produce":
		emit(produce(ctx, seeds, *topic, *n, *value, *interval, *delivery))
	case "consume":
		emit(consume(ctx, seeds, *topic, *group, *n))
	case "metadata":
		emit(metadata(ctx, seeds))
	default:
		fail("unknown mode " + mode)
	}
}

// tally counts error texts, so a run with thousands of identical failures stays readable.
type tally struct {
	mu     sync.Mutex
	counts map[string]int
}

func (t *tally) add(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.counts == nil {
		t.counts = map[string]int{}
	}
	t.counts[err.Error()]++
}

func (t *tally) snapshot() map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]int{}
	for k, v := range t.counts {
		out[k] = v
	}
	return out
}

// connHooks records what the client saw at the connection level: dial errors
// (ECONNREFUSED and the like) and read errors (franz-go's "is TLS missing?"
// guess when a peer closes right after accepting).
type connHooks struct {
	connect, read tally
	fetches       atomic.Int64
}

func (h *connHooks) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err != nil {
		h.connect.add(err)
	}
}

func (h *connHooks) OnBrokerRead(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	if err != nil {
		h.read.add(err)
	} else if key == 1 { // Fetch
		h.fetches.Add(1)
	}
}

func produce(ctx context.Context, seeds []kgo.Opt, topic string, n int, format string, interval, delivery time.Duration) map[string]any {
	hooks := &connHooks{}
	cl, err := kgo.NewClient(append(seeds, kgo.DefaultProduceTopic(topic), kgo.RecordDeliveryTimeout(delivery),
		kgo.WithHooks(hooks))...)
	if err != nil {
		fail(err.Error())
	}
	defer cl.Close()
	var acked, failed atomic.Int64
	var errs tally
	var wg sync.WaitGroup
	started := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		wg.Add(1)
		cl.Produce(ctx, &kgo.Record{Value: fmt.Appendf(nil, format, i)}, func(_ *kgo.Record, err error) {
			defer wg.Done()
			if err != nil {
				failed.Add(1)
				errs.add(err)
			} else {
				acked.Add(1)
			}
		})
		if interval > 0 {
			time.Sleep(interval)
		}
	}
	wg.Wait()
	return map[string]any{
		"acked": acked.Load(), "failed": failed.Load(), "errors": errs.snapshot(),
		"connect_errors": hooks.connect.snapshot(), "read_errors": hooks.read.snapshot(),
		"elapsed_s": time.Since(started).Seconds(),
	}
}

func consume(ctx context.Context, seeds []kgo.Opt, topic, group string, n int) map[string]any {
	hooks := &connHooks{}
	var assignedAt atomic.Int64 // fetch count when partitions were assigned, plus one
	cl, err := kgo.NewClient(append(seeds, kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(500*time.Millisecond),
		kgo.WithHooks(hooks),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
			if len(assigned[topic]) > 0 {
				assignedAt.CompareAndSwap(0, hooks.fetches.Load()+1)
			}
		}))...)
	if err != nil {
		fail(err.Error())
	}
	defer cl.Close()
	go func() { // ready once fetch sessions are past their first, full request
		for ctx.Err() == nil {
			if at := assignedAt.Load(); at > 0 && hooks.fetches.Load() >= at-1+3 {
				emit(map[string]any{"ready": true})
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	values, errs := []string{}, []string{}
	for len(values) < n && ctx.Err() == nil {
		fetches := cl.PollFetches(ctx)
		fatal := false
		fetches.EachError(func(t string, p int32, err error) {
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				return
			}
			errs = append(errs, fmt.Sprintf("%s[%d]: %v", t, p, err))
			fatal = fatal || !kerr.IsRetriable(err)
		})
		fetches.EachRecord(func(r *kgo.Record) { values = append(values, string(r.Value)) })
		if fatal {
			break
		}
	}
	if ctx.Err() != nil && len(values) < n {
		errs = append(errs, fmt.Sprintf("timed out with %d of %d records", len(values), n))
	}
	return map[string]any{"values": values, "errors": errs, "read_errors": hooks.read.snapshot()}
}

func metadata(ctx context.Context, seeds []kgo.Opt) map[string]any {
	cl, err := kgo.NewClient(seeds...)
	if err != nil {
		fail(err.Error())
	}
	defer cl.Close()
	topics, errs := []string{}, []string{}
	md, err := kadm.NewClient(cl).Metadata(ctx) // no topics: franz-go asks for all of them
	if err != nil {
		errs = append(errs, err.Error())
	}
	for name, detail := range md.Topics {
		topics = append(topics, name)
		if detail.Err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", name, detail.Err))
		}
	}
	sort.Strings(topics)
	return map[string]any{"topics": topics, "errors": errs}
}

func emit(v any) {
	out, _ := json.Marshal(v)
	fmt.Println(string(out))
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "franz:", msg)
	os.Exit(2)
}
