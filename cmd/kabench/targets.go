// This file turns -url, -label, -unix, -path and -upstream into the
// targets kabench measures, and dials unix sockets for them.

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
)

// listFlag is a flag that may be given several times, each time one value
// or a comma list. Empty items are kept, for validate to refuse.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	for item := range strings.SplitSeq(s, ",") {
		*l = append(*l, strings.TrimSpace(item))
	}
	return nil
}

// commaFlag is a listFlag that records whether a value had a comma: a
// URL that fails to parse may be a piece of one whose comma should have
// been %2C.
type commaFlag struct {
	list   *listFlag
	commas *bool
}

func (f commaFlag) String() string {
	if f.list == nil {
		return ""
	}
	return f.list.String()
}

func (f commaFlag) Set(s string) error {
	*f.commas = *f.commas || strings.Contains(s, ",")
	return f.list.Set(s)
}

// unixHost is the host of the URL requested over a unix socket; the
// socket, not the host, says where the request goes.
const unixHost = "unix"

// embedded reports whether kabench measures its embedded server, directly
// or behind nginx.
func (c *config) embedded() bool { return len(c.urls) == 0 && c.unix == "" && c.upstream == "" }

// validateTargets checks the target flags and builds c.ext from -url and
// -unix.
func (c *config) validateTargets() error {
	if !strings.HasPrefix(c.path, "/") {
		return &usageError{"path", fmt.Sprintf("must start with /, got %q", c.path)}
	}
	switch {
	case c.upstream != "" && c.proxy == "":
		return &usageError{"upstream", "is the app behind -proxy nginx; give -proxy nginx too (or measure the app itself with -url or -unix)"}
	case c.upstream != "":
		if err := checkUpstream(c.upstream); err != nil {
			return err
		}
	case c.unix != "" && len(c.urls) > 0:
		return &usageError{"unix", "cannot be combined with -url; give the socket as -url unix:PATH:/path"}
	}
	for _, u := range c.urls {
		t, err := c.parseTarget(u)
		var ue *usageError
		if errors.As(err, &ue) && ue.flag == "url" && c.urlCommas {
			ue.reason += " (-url splits its value at commas: write a comma inside a URL as %2C)"
		}
		if err != nil {
			return err
		}
		c.ext = append(c.ext, t)
	}
	if c.unix != "" {
		c.ext = append(c.ext, target{url: "http://" + unixHost + c.path, unix: c.unix, setup: "unix:" + c.unix + c.path})
	}
	if err := c.label(); err != nil {
		return err
	}
	if c.set["path"] && len(c.ext) > 0 && c.unix == "" && !slices.ContainsFunc(c.urls, func(u string) bool {
		return strings.HasPrefix(u, "unix:") && !strings.Contains(u[len("unix:"):], ":/")
	}) {
		return &usageError{"path", "no target uses it: every -url has its own path (put the path in the URL)"}
	}
	return nil
}

// parseTarget parses one -url: an HTTP(S) URL, or unix:PATH with an
// optional :/path.
func (c *config) parseTarget(s string) (target, error) {
	if s == "" {
		return target{}, &usageError{"url", "empty URL"}
	}
	if rest, ok := strings.CutPrefix(s, "unix:"); ok {
		sock, path, hasPath := strings.Cut(rest, ":/")
		if sock == "" {
			return target{}, &usageError{"url", fmt.Sprintf("no socket path in %q (want unix:PATH or unix:PATH:/path)", s)}
		}
		p := c.path
		if hasPath {
			p = "/" + path
		}
		return target{url: "http://" + unixHost + p, unix: sock, setup: "unix:" + sock + p}, nil
	}
	if err := checkURL(s); err != nil {
		return target{}, err
	}
	u, _ := url.Parse(s)
	return target{url: s, setup: u.Host + u.EscapedPath()}, nil
}

// label names the targets: -label in order, else "direct" for a single
// target, else host:port/path (unix:PATH/path for a socket).
func (c *config) label() error {
	if len(c.labels) > len(c.ext) {
		return &usageError{"label", fmt.Sprintf("%d labels for %d targets (give one per -url or -unix, in order)", len(c.labels), len(c.ext))}
	}
	if len(c.ext) == 1 && len(c.labels) == 0 {
		c.ext[0].setup = "direct"
	}
	seen := map[string]bool{}
	for i := range c.ext {
		flagName := "url"
		if i < len(c.labels) {
			flagName = "label"
			if c.labels[i] == "" {
				return &usageError{"label", fmt.Sprintf("label %d is empty", i+1)}
			}
			c.ext[i].setup = c.labels[i]
		}
		if seen[c.ext[i].setup] {
			return &usageError{flagName, fmt.Sprintf("two targets named %q (give each a -label of its own)", c.ext[i].setup)}
		}
		seen[c.ext[i].setup] = true
	}
	return nil
}

// checkUpstream checks -upstream: host:port or unix:/absolute/path, as
// nginx's upstream server directive takes them.
func checkUpstream(s string) error {
	if strings.ContainsAny(s, " \t\n;{}'\"#") { // it goes into nginx.conf
		return &usageError{"upstream", fmt.Sprintf("%q has characters nginx.conf cannot take", s)}
	}
	if sock, ok := strings.CutPrefix(s, "unix:"); ok {
		if !strings.HasPrefix(sock, "/") {
			return &usageError{"upstream", fmt.Sprintf("unix socket path must be absolute, got %q", sock)}
		}
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || port == "" {
		return &usageError{"upstream", fmt.Sprintf("want host:port or unix:/path.sock, got %q", s)}
	}
	return nil
}

// address is where t's requests go: its URL, or unix:PATH:/path.
func (t target) address() string {
	if t.unix == "" {
		return t.url
	}
	return "unix:" + t.unix + ":" + strings.TrimPrefix(t.url, "http://"+unixHost)
}

// targetInfo names a target of a comparison, for the report.
type targetInfo struct {
	Label string `json:"label"`
	URL   string `json:"url"`
}

// writeTargets lists the targets of a comparison under the report's first
// line.
func writeTargets(w io.Writer, targets []targetInfo) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, t := range targets {
		fmt.Fprintf(tw, "  %s\t%s\n", t.Label+":", t.URL)
	}
	tw.Flush()
}

// unixDialer returns a DialContext that dials the socket sock whatever the
// address, for an http.Transport.
func unixDialer(sock string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		return d.DialContext(ctx, "unix", sock)
	}
}
