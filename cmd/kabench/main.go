// Command kabench measures what keep-alive buys: it sends the same load
// with three clients in turn (no keep-alive, Go's default client, and
// keepalive.NewClient) and prints, per client, requests per second and
// time per request for each run and on average, latency percentiles, new
// connections, errors, retries, and the difference to the no-keep-alive
// baseline; then where each client's time goes (DNS, connect, TLS, wait,
// read) and notes on what happened that the numbers alone do not say.
// -plot writes the case as a page of charts.
//
// With no -url it measures an embedded server on 127.0.0.1; -proxy nginx
// puts nginx in front of it, with and without upstream keep-alive.
//
// This file holds main and run, which wires the pieces together: the flags
// (config.go, request.go, targets.go, tls.go), the servers (server.go,
// nginx.go), the measurement (measure.go, clients.go, phases.go) and the
// output (report.go, notes.go, chart.go, plot.go).
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1 // the measurement could not be made, or requests failed
	exitUsage   = 2 // invalid command line
)

// run is the whole command; it returns the exit status. Tests call it
// directly.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		var ue *usageError
		if errors.As(err, &ue) { // the flag package prints its own errors
			fmt.Fprintf(stderr, "kabench: %v\n", err)
		}
		return exitUsage
	}
	if err := measure(ctx, &cfg, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "kabench: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// measure sets up the targets, measures every client against each, and
// writes the report. It returns an error if any request failed.
func measure(ctx context.Context, cfg *config, stdout, stderr io.Writer) (err error) {
	targets, cleanup, err := setUp(ctx, cfg)
	if err != nil {
		return interrupted(ctx, err)
	}
	defer func() {
		if cerr := cleanup(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	warnTLS(cfg, stderr)
	for _, t := range targets {
		if err := probe(ctx, cfg, t); err != nil {
			return interrupted(ctx, err)
		}
	}

	rep := newReport(cfg, targets[0].address())
	if b := targets[0].backends; b != nil {
		rep.Backends = b.endpoints()
	}
	if len(targets) > 1 && !cfg.embedded() {
		for _, t := range targets {
			rep.Targets = append(rep.Targets, targetInfo{Label: t.setup, URL: t.address()})
		}
	}
	out := stdout
	if cfg.json {
		out = io.Discard // only the JSON goes to stdout
	}
	rep.writeHeader(out)

	var p *progress
	if isTerminal(stderr) {
		p = startProgress(stderr)
	}
	results, err := measureAll(ctx, cfg, targets, p)
	p.stop()
	if err != nil {
		return err
	}
	rep.Results = results
	for i := range rep.Results {
		for _, r := range rep.Results[i].Runs {
			rep.Errors += r.Errors
		}
		if !cfg.quiet {
			rep.writeClient(out, &rep.Results[i])
		}
	}
	rep.Interrupted = ctx.Err() != nil
	rep.compare()
	rep.setBackendShares() // backends.go
	rep.Notes = rep.notes()
	rep.writeSummary(out)
	if !cfg.quiet {
		rep.writeCharts(out) // chart.go
	}
	if cfg.json {
		if err := rep.writeJSON(stdout); err != nil {
			return err
		}
	}
	if cfg.plot != "" {
		if err := rep.writePlot(cfg.plot); err != nil {
			return err
		}
	}
	switch {
	case rep.Interrupted:
		return fmt.Errorf("%w; the results above are partial", errInterrupted)
	case rep.Errors > 0:
		return fmt.Errorf("%d requests failed; the first errors are in the report", rep.Errors)
	}
	return nil
}

// errInterrupted is the error of a run stopped by a signal.
var errInterrupted = errors.New("interrupted")

// interrupted returns errInterrupted instead of err if ctx has ended: a
// request cut off by Ctrl-C says nothing about the endpoint.
func interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return errInterrupted
	}
	return err
}

// setUp starts what the targets need: nothing for -url and -unix, the
// embedded server, and nginx in front of it or of -upstream for -proxy
// nginx. cleanup stops them.
func setUp(ctx context.Context, cfg *config) ([]target, func() error, error) {
	if len(cfg.ext) > 0 {
		return cfg.ext, func() error { return nil }, nil
	}
	// -upstream: nginx in front of the user's app, whose connections
	// kabench cannot count.
	var tc *tls.Config
	if cfg.tls { // tls.go
		cert, err := generateCert()
		if err != nil {
			return nil, nil, fmt.Errorf("generating the -tls certificate: %w", err)
		}
		cfg.roots, cfg.cert = cert.roots, cert
		if cfg.proxy == "" { // behind nginx, nginx terminates TLS
			tc = cert.serverTLSConfig(cfg.http1)
		}
	}
	upstream, serverConns, stopServer := cfg.upstream, (func() int64)(nil), func() {}
	if upstream == "" {
		srv, err := startServer(tc, cfg.backends)
		if err != nil {
			return nil, nil, fmt.Errorf("starting the embedded server: %w", err)
		}
		stopServer = func() { srv.close(cfg.timeout) }
		if cfg.proxy == "" {
			t := target{setup: "direct", url: srv.url + cfg.path[1:], serverConns: srv.conns.Load, backends: srv.backends}
			return []target{t}, func() error { stopServer(); return nil }, nil
		}
		u, _ := url.Parse(srv.url)
		upstream, serverConns = u.Host, srv.conns.Load
	}
	var ntls *nginxTLS
	if cfg.tls {
		ntls = &nginxTLS{cert: cfg.cert, http1: cfg.http1}
	}
	ng, err := startNginx(ctx, upstream, cfg.timeout, ntls)
	if err != nil {
		stopServer()
		return nil, nil, err
	}
	targets := []target{
		{setup: "nginx, upstream keep-alive off", url: ng.urlOff + cfg.path[1:], serverConns: serverConns, diagnose: ng.diagnose},
		{setup: "nginx, upstream keep-alive on", url: ng.urlOn + cfg.path[1:], serverConns: serverConns, diagnose: ng.diagnose},
	}
	return targets, func() error {
		// nginx first: its graceful stop may still talk to the server.
		err := ng.stop(cfg.timeout)
		stopServer()
		return err
	}, nil
}

// isTerminal reports whether w is a terminal, without a dependency: a
// character device is one, or close enough for a progress line.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
