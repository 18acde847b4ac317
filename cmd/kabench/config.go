// This file holds the command line: the flags, their defaults, and the
// validation that turns them into a config. The measurement is in
// measure.go, the clients in clients.go, nginx in nginx.go, the output in
// report.go.

package main

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Flag defaults. The default run (three clients, three runs each of
// defaultRequests requests) takes about 10-20 s on a 2-core machine.
const (
	defaultRequests    = 10000
	defaultConcurrency = 64
	defaultRuns        = 3
	defaultMethod      = http.MethodGet
	defaultTimeout     = 10 * time.Second
	defaultMaxErrors   = 100
)

// Client names, in the order they are measured by default. nokeepalive is
// the baseline the others are compared with.
const (
	clientNoKeepAlive = "nokeepalive"
	clientDefault     = "default"
	clientKeepAlive   = "keepalive"
)

var allClients = []string{clientNoKeepAlive, clientDefault, clientKeepAlive}

// proxyNginx is the one value -proxy accepts.
const proxyNginx = "nginx"

// config is the validated command line.
type config struct {
	urls        []string // -url, each given or comma list; empty: the embedded server
	urlCommas   bool     // a -url value was split at a comma
	requests    int
	concurrency int
	runs        int
	method      string
	bodySize    int
	bodyFile    string        // -body-file
	body        []byte        // every request's body: -body-file's, or -body zero bytes
	headers     []string      // -H, as given
	header      http.Header   // -H but Host; nil if none
	host        string        // -H Host: the requests' Host
	duration    time.Duration // -z: run each run for this long instead of -n requests; 0: -n
	clients     []string
	json        bool
	quiet       bool // -q: the summary alone
	timeout     time.Duration
	maxErrors   int
	proxy       string
	backends    int    // -backends: serve the embedded server on this many addresses (backends.go)
	plot        string // -plot: the HTML page to write (plot.go)
	plotSet     bool   // -plot given, even if empty
	// targets.go
	labels   []string        // -label, one per -url or -unix
	unix     string          // -unix socket path
	path     string          // -path of requests to the embedded server, nginx, unix sockets
	upstream string          // -upstream of -proxy nginx: host:port or unix:PATH
	ext      []target        // the -url and -unix targets, from validate (targets.go)
	set      map[string]bool // the flags given

	// HTTPS (tls.go)
	tls      bool           // serve the embedded server, and nginx, over TLS
	cacert   string         // PEM roots to trust for an https -url
	insecure bool           // skip certificate verification
	http1    bool           // force HTTP/1.1
	roots    *x509.CertPool // from -cacert, or -tls's certificate; nil: the system's
	cert     *generatedCert // -tls's certificate, once generated
}

// errUsage marks a command line error: exit status 2, as the flag package
// uses.
var errUsage = errors.New("usage")

// usageError is a command line error that names its flag.
type usageError struct {
	flag, reason string
}

func (e *usageError) Error() string        { return "invalid -" + e.flag + ": " + e.reason }
func (e *usageError) Is(target error) bool { return target == errUsage }

// usageExamples end -h.
const usageExamples = `
Examples:
  kabench                                    the embedded server on 127.0.0.1, about 10-20 s
  kabench -q -n 2000                         a shorter run, the summary alone
  kabench -tls                               over HTTPS, HTTP/2 where both sides offer it
  kabench -tls -http1                        over HTTPS, HTTP/1.1 only
  kabench -proxy nginx                       nginx in front, upstream keep-alive off and on
  kabench -backends 8                        the embedded server on 8 addresses of one name:
                                             which of them each client sends its requests to
  kabench -proxy nginx -upstream unix:/run/app.sock -path /health
                                             your app behind nginx
  kabench -url http://127.0.0.1:8080/health -c 16 -z 30s
                                             your endpoint, for 30 s per run
  kabench -url https://api.example.com/v1/items -H 'Authorization: Bearer TOKEN' -cacert ca.pem
  kabench -url http://10.0.0.1/ -H 'Host: shop.example.com' -method POST -body-file order.json
  kabench -url http://10.0.0.1/health,http://10.0.0.2/health -label old,new
                                             compare two endpoints
  kabench -json | jq '.results[] | {client, rps: .average.requests_per_second}'
  kabench -plot kabench.html                 also write the charts to an HTML page
`

// parseFlags parses args into a config. It returns flag.ErrHelp for -h, and
// an error matching errUsage, naming the flag, for anything invalid.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	var clients string
	fs := flag.NewFlagSet("kabench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(commaFlag{(*listFlag)(&c.urls), &c.urlCommas}, "url", "measure this HTTP(S) `URL`, or unix:PATH:/path, instead of the embedded server; several (repeated or comma list) are compared")
	fs.IntVar(&c.requests, "n", defaultRequests, "requests per run")
	fs.IntVar(&c.concurrency, "c", defaultConcurrency, "concurrent requests")
	fs.IntVar(&c.runs, "runs", defaultRuns, "runs per client; each run uses a new client")
	fs.StringVar(&c.method, "method", defaultMethod, "HTTP method")
	fs.IntVar(&c.bodySize, "body", 0, "request body size in `bytes` (zero bytes)")
	fs.StringVar(&c.bodyFile, "body-file", "", "send the contents of `FILE` as every request's body")
	fs.Var((*headerFlag)(&c.headers), "H", "add the request header `'Name: value'` (repeatable); -H 'Host: name' sets the Host")
	fs.DurationVar(&c.duration, "z", 0, "run each run for this `duration` instead of -n requests (10s, 1m)")
	fs.StringVar(&clients, "clients", strings.Join(allClients, ","), "comma-separated clients to measure, in order")
	fs.BoolVar(&c.json, "json", false, "print the result as JSON on stdout instead of tables")
	fs.BoolVar(&c.quiet, "q", false, "print the summary alone: no table per client, no charts")
	fs.DurationVar(&c.timeout, "timeout", defaultTimeout, "per request timeout (whole exchange, retries included); also bounds the probe and nginx start and stop")
	fs.IntVar(&c.maxErrors, "max-errors", defaultMaxErrors, "stop a run after this many failed requests; 0 means never")
	fs.StringVar(&c.proxy, "proxy", "", "put a proxy in front of the embedded server (or -upstream): only \"nginx\"")
	fs.Var((*listFlag)(&c.labels), "label", "`name` of each -url or -unix target in the report, in order (repeated or comma list); default: host:port/path")
	fs.StringVar(&c.unix, "unix", "", "measure an app listening on the unix socket `PATH` (requests go to http://unix + -path)")
	fs.StringVar(&c.path, "path", "/", "path of the requests to the embedded server, nginx and -unix")
	fs.StringVar(&c.upstream, "upstream", "", "with -proxy nginx: put nginx in front of this app, `ADDR` host:port or unix:PATH, instead of the embedded server")
	fs.IntVar(&c.backends, "backends", 1, "serve the embedded server on `N` addresses, 127.0.0.2 on, of one name the clients resolve, and count the requests each gets")
	fs.StringVar(&c.plot, "plot", "", "also write the charts to this self-contained HTML `file`")
	fs.BoolVar(&c.tls, "tls", false, "serve the embedded server (and nginx) over TLS, with a certificate generated at start")
	fs.StringVar(&c.cacert, "cacert", "", "trust the PEM certificates in `FILE` for an https -url")
	fs.BoolVar(&c.insecure, "insecure", false, "do not verify the certificate of an https -url (insecure)")
	fs.BoolVar(&c.http1, "http1", false, "force HTTP/1.1 (no HTTP/2) for every client")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: kabench [flags]\n\n"+
			"kabench measures HTTP clients with and without keep-alive: %s.\n"+
			"With no -url, -unix or -upstream it measures an embedded server on 127.0.0.1.\n\nFlags:\n",
			strings.Join(allClients, ", "))
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), usageExamples)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, err
		}
		// The flag package has printed the error and the usage.
		return c, fmt.Errorf("%w: %v", errUsage, err)
	}
	fs.Visit(func(f *flag.Flag) { c.plotSet = c.plotSet || f.Name == "plot" })
	if fs.NArg() > 0 {
		return c, &usageError{"url", fmt.Sprintf("unexpected argument %q (give the URL with -url)", fs.Arg(0))}
	}
	c.set = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { c.set[f.Name] = true })
	var err error
	if c.clients, err = parseClients(clients); err != nil {
		return c, err
	}
	return c, c.validate()
}

func parseClients(s string) ([]string, error) {
	var out []string
	for name := range strings.SplitSeq(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !slices.Contains(allClients, name) {
			return nil, &usageError{"clients", fmt.Sprintf("unknown client %q (want %s)", name, strings.Join(allClients, ", "))}
		}
		if slices.Contains(out, name) {
			return nil, &usageError{"clients", fmt.Sprintf("client %q given twice", name)}
		}
		out = append(out, name)
	}
	if len(out) == 0 {
		return nil, &usageError{"clients", "no client given (want some of " + strings.Join(allClients, ", ") + ")"}
	}
	return out, nil
}

func (c *config) validate() error {
	switch {
	case c.set["z"] && c.duration <= 0:
		return &usageError{"z", fmt.Sprintf("must be positive, got %v", c.duration)}
	case c.set["z"] && c.set["n"]:
		return &usageError{"z", "runs each run for a time instead of -n requests; give one of them"}
	case c.requests < 1:
		return &usageError{"n", fmt.Sprintf("must be at least 1, got %d", c.requests)}
	case c.concurrency < 1:
		return &usageError{"c", fmt.Sprintf("must be at least 1, got %d", c.concurrency)}
	case c.runs < 1:
		return &usageError{"runs", fmt.Sprintf("must be at least 1, got %d", c.runs)}
	case c.bodySize < 0:
		return &usageError{"body", fmt.Sprintf("must not be negative, got %d", c.bodySize)}
	case c.timeout <= 0:
		return &usageError{"timeout", fmt.Sprintf("must be positive, got %v", c.timeout)}
	case c.maxErrors < 0:
		return &usageError{"max-errors", fmt.Sprintf("must not be negative, got %d", c.maxErrors)}
	case !validMethod(c.method):
		return &usageError{"method", fmt.Sprintf("%q is not an HTTP method token", c.method)}
	case c.method != strings.ToUpper(c.method) && slices.Contains(standardMethods, strings.ToUpper(c.method)):
		return &usageError{"method", fmt.Sprintf("%q: methods are case-sensitive; did you mean %s?", c.method, strings.ToUpper(c.method))}
	case c.proxy != "" && c.proxy != proxyNginx:
		return &usageError{"proxy", fmt.Sprintf("unknown proxy %q (want %q)", c.proxy, proxyNginx)}
	case c.proxy != "" && (len(c.urls) > 0 || c.unix != ""):
		return &usageError{"proxy", "puts nginx in front of the embedded server or -upstream, so it cannot be combined with -url or -unix"}
	}
	if err := c.validateBackends(); err != nil { // backends.go
		return err
	}
	if c.plotSet {
		if err := checkPlot(c.plot); err != nil {
			return err
		}
	}
	// More workers than requests would only sit idle.
	if c.duration == 0 {
		c.concurrency = min(c.concurrency, c.requests)
	}
	var err error
	if c.header, c.host, err = parseHeaders(c.headers); err != nil { // request.go
		return err
	}
	if err := c.loadBody(); err != nil {
		return err
	}
	if err := c.validateTargets(); err != nil { // targets.go
		return err
	}
	return c.validateTLS() // tls.go
}

func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return &usageError{"url", err.Error()}
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return &usageError{"url", fmt.Sprintf("scheme must be http or https, got %q", u.Scheme)}
	}
	if u.Host == "" {
		return &usageError{"url", fmt.Sprintf("no host in %q", s)}
	}
	return nil
}

// standardMethods are the methods of RFC 9110 and RFC 5789. A lower-case
// form of one of them is a typo that a server answers with 405 or 501;
// other methods are taken as given, case and all.
var standardMethods = []string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
	http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace,
}

// validMethod reports whether m is an RFC 9110 token, as net/http requires.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, r := range m {
		if r > 0x7e || r <= ' ' || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) {
			return false
		}
	}
	return true
}
