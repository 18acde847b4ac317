// This file holds -backends: the embedded server on N loopback addresses
// of one port, the name the clients reach them by (kabench resolves it
// itself: keepalive through keepalive.WithResolver, the net/http clients
// through their DialContext), the probe of every backend, and the
// requests each backend got, in the terminal and in the JSON. plot.go
// draws them.

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// backendsName is the name the clients reach the backends by. .invalid
// is reserved (RFC 2606): no resolver answers it, so only kabench's own
// resolution can send a request anywhere.
const backendsName = "kabench.invalid"

// maxBackends bounds -backends: 127.0.0.2 to 127.0.0.65, more than a
// table or a chart of shares can show.
const maxBackends = 64

// listenTries is how often listenBackends starts over on a new port when
// the port of the first address is taken on another.
const listenTries = 10

// validateBackends checks -backends: 1 to maxBackends, and only for the
// embedded server, which it serves on that many addresses.
func (c *config) validateBackends() error {
	if c.backends < 1 || c.backends > maxBackends {
		return &usageError{"backends", fmt.Sprintf("must be between 1 and %d, got %d", maxBackends, c.backends)}
	}
	if !c.set["backends"] {
		return nil
	}
	for _, other := range []string{"url", "unix", "proxy", "upstream"} {
		if c.set[other] {
			return &usageError{"backends", "serves the embedded server on several loopback addresses behind one name, so it cannot be combined with -" + other}
		}
	}
	return nil
}

// backendAddrs returns the n addresses of -backends, 127.0.0.2 on.
func backendAddrs(n int) []netip.Addr {
	addrs := make([]netip.Addr, n)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{127, 0, 0, byte(2 + i)})
	}
	return addrs
}

// listenBackends listens on one port of every address: on a random port
// of the first, then on that port of the others. If another listener has
// the port on one of them, it starts over, up to listenTries times. listen
// is net.Listen but in tests.
func listenBackends(addrs []netip.Addr, listen func(network, addr string) (net.Listener, error)) ([]net.Listener, error) {
	var err error
	for range listenTries {
		var lns []net.Listener
		if lns, err = listenOnePort(addrs, listen); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			return lns, err
		}
	}
	return nil, fmt.Errorf("no port free on all of %s-%s in %d tries: %w", addrs[0], addrs[len(addrs)-1], listenTries, err)
}

// listenOnePort is one try of listenBackends.
func listenOnePort(addrs []netip.Addr, listen func(network, addr string) (net.Listener, error)) ([]net.Listener, error) {
	first, err := listen("tcp", netip.AddrPortFrom(addrs[0], 0).String())
	if err != nil {
		return nil, noLoopback(err)
	}
	port := uint16(first.Addr().(*net.TCPAddr).Port)
	lns := []net.Listener{first}
	for _, a := range addrs[1:] {
		ln, err := listen("tcp", netip.AddrPortFrom(a, port).String())
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, noLoopback(err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// noLoopback adds what to do to the error of an address the machine does
// not have: Linux answers on all of 127.0.0.0/8, macOS on 127.0.0.1 only.
func noLoopback(err error) error {
	if errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("%w (-backends serves on 127.0.0.2 and up; Linux answers on all of 127.0.0.0/8, elsewhere add them to the loopback interface, on macOS: sudo ifconfig lo0 alias 127.0.0.2 up)", err)
	}
	return err
}

// backendSet is how the clients reach the backends: backendsName on one
// port, which resolves to addrs, in order.
type backendSet struct {
	port     string
	addrs    []netip.Addr
	requests func() []int64 // per backend, server side, so far
}

// hostPort is the backends' address in a URL: backendsName:port.
func (b *backendSet) hostPort() string { return net.JoinHostPort(backendsName, b.port) }

// endpoints are the backends as ip:port, in order.
func (b *backendSet) endpoints() []string {
	out := make([]string, len(b.addrs))
	for i, a := range b.addrs {
		out[i] = net.JoinHostPort(a.String(), b.port)
	}
	return out
}

// resolve is keepalive's resolver (keepalive.WithResolver): the backends'
// addresses for backendsName, in order; the system's for any other name.
func (b *backendSet) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if host != backendsName {
		return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	}
	return slices.Clone(b.addrs), nil
}

// dialer returns the DialContext of the net/http clients. It resolves
// backendsName as resolve does and dials its addresses in order, the
// first that answers winning, as net.Dialer dials a name with several
// addresses of one family: the clients behave as they would with a real
// name. Other addresses are dialed as given. The dialer is the one of
// http.DefaultTransport.
func (b *backendSet) dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host != backendsName {
			return d.DialContext(ctx, network, addr)
		}
		var first error
		for _, a := range b.addrs {
			c, err := d.DialContext(ctx, network, net.JoinHostPort(a.String(), port))
			if err == nil {
				return c, nil
			}
			if first == nil {
				first = err
			}
			if ctx.Err() != nil {
				break
			}
		}
		return nil, first
	}
}

// pinned returns a DialContext that dials backend i whatever the address,
// for the probe of each backend.
func (b *backendSet) pinned(i int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	to := b.endpoints()[i]
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, to)
	}
}

// backendCounts is the requests each backend got in a run: the counts
// after it less those before.
func backendCounts(before, after []int64) []int64 {
	if after == nil {
		return nil
	}
	out := make([]int64, len(after))
	for i := range after {
		out[i] = after[i] - before[i]
	}
	return out
}

// averageBackends is the mean of the runs' requests per backend, rounded.
func averageBackends(runs []runResult) []int64 {
	sum := sumBackends(runs)
	if sum == nil {
		return nil
	}
	for i := range sum {
		sum[i] = roundDiv(sum[i], int64(len(runs)))
	}
	return sum
}

// sumBackends adds up the runs' requests per backend; nil without
// -backends.
func sumBackends(runs []runResult) []int64 {
	var sum []int64
	for _, r := range runs {
		if sum == nil && r.Backends != nil {
			sum = make([]int64, len(r.Backends))
		}
		for i, n := range r.Backends {
			sum[i] += n
		}
	}
	return sum
}

// shares turns counts into percentages of their total; all 0 for none.
func shares(counts []int64) []float64 {
	if counts == nil {
		return nil
	}
	var total int64
	for _, n := range counts {
		total += n
	}
	out := make([]float64, len(counts))
	for i, n := range counts {
		if total > 0 {
			out[i] = float64(n) / float64(total) * 100
		}
	}
	return out
}

// roundShares rounds percentages to one decimal, for the JSON.
func roundShares(s []float64) []float64 {
	for i, v := range s {
		s[i], _ = strconv.ParseFloat(strconv.FormatFloat(v, 'f', 1, 64), 64)
	}
	return s
}

// setBackendShares sets every result's share of requests per backend,
// over all its runs.
func (r *report) setBackendShares() {
	for i := range r.Results {
		res := &r.Results[i]
		res.BackendShares = roundShares(shares(sumBackends(res.Runs)))
	}
}

// minMaxShare returns the lowest and the highest share, and the index of
// the highest.
func minMaxShare(s []float64) (lo, hi float64, top int) {
	for i, v := range s {
		if i == 0 || v < lo {
			lo = v
		}
		if i == 0 || v > hi {
			hi, top = v, i
		}
	}
	return lo, hi, top
}

// pct formats a share: 12.5%.
func pct(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) + "%" }

// backendRange names the backends in a line: 127.0.0.2-127.0.0.9.
func (r *report) backendRange() string {
	first, _, _ := strings.Cut(r.Backends[0], ":")
	last, _, _ := strings.Cut(r.Backends[len(r.Backends)-1], ":")
	return first + "-" + last
}

// writeBackends writes the requests each backend got from each client,
// server side, averages per run, and each client's share of them: a row
// per backend, two columns per client, then the most and the fewest.
func (r *report) writeBackends(w io.Writer) {
	if len(r.Backends) == 0 || len(r.Results) == 0 {
		return
	}
	fmt.Fprintf(w, "\nRequests per backend (server side, averages per run; %s resolves to %s, in that order)\n", backendsName, r.backendRange())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	labels := append([]string{"Backend"}, r.Backends...)
	labels = append(labels, "Max share", "Min share")
	leftAlign(labels)
	head := []string{labels[0]}
	for _, res := range r.Results {
		head = append(head, res.Client, "share")
	}
	fmt.Fprintf(tw, "%s\t\n", strings.Join(head, "\t"))
	counts := make([][]int64, len(r.Results))
	pcts := make([][]float64, len(r.Results))
	for j := range r.Results {
		counts[j] = r.Results[j].Average.Backends
		pcts[j] = shares(sumBackends(r.Results[j].Runs))
	}
	for i := range r.Backends {
		row := []string{labels[i+1]}
		for j := range r.Results {
			row = append(row, backendCell(counts[j], i), backendShare(pcts[j], i))
		}
		fmt.Fprintf(tw, "%s\t\n", strings.Join(row, "\t"))
	}
	most, least := []string{labels[len(labels)-2]}, []string{labels[len(labels)-1]}
	for j := range r.Results {
		if len(pcts[j]) == 0 {
			most, least = append(most, "", "-"), append(least, "", "-")
			continue
		}
		lo, hi, _ := minMaxShare(pcts[j])
		most, least = append(most, "", pct(hi)), append(least, "", pct(lo))
	}
	fmt.Fprintf(tw, "%s\t\n%s\t\n", strings.Join(most, "\t"), strings.Join(least, "\t"))
	tw.Flush()
	fmt.Fprintf(w, "An even spread is %s per backend.\n", pct(100/float64(len(r.Backends))))
}

func backendCell(counts []int64, i int) string {
	if i >= len(counts) {
		return "-"
	}
	return commas(float64(counts[i]), 0)
}

func backendShare(pcts []float64, i int) string {
	if i >= len(pcts) {
		return "-"
	}
	return pct(pcts[i])
}

// backendNotes say, with -backends, where each client sent its requests:
// to one backend (the first address), or spread over all of them.
func (r *report) backendNotes() []string {
	if len(r.Backends) < 2 {
		return nil
	}
	even := 100 / float64(len(r.Backends))
	var out []string
	for i := range r.Results {
		res := &r.Results[i]
		s := shares(sumBackends(res.Runs))
		if len(s) == 0 || res.Average.Requests == 0 {
			continue
		}
		lo, hi, top := minMaxShare(s)
		switch {
		case hi >= 90:
			first := ""
			if top == 0 {
				first = ", the first address of " + backendsName
			}
			why := ""
			switch res.Client {
			case clientNoKeepAlive:
				why = ": it dials a connection per request, and every dial goes to the first address that answers"
			case clientDefault:
				why = ": net/http dials the first address that answers, and keep-alive then reuses those connections"
			}
			out = append(out, fmt.Sprintf("%s sent %s of its requests to %s%s%s.",
				r.name(res), pct(hi), r.Backends[top], first, why))
		case lo > 0:
			out = append(out, fmt.Sprintf("%s spread its requests over all %d backends, %s to %s each (even: %s).",
				r.name(res), len(r.Backends), pct(lo), pct(hi), pct(even)))
		}
	}
	return out
}
