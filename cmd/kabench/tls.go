// This file holds HTTPS: the -tls, -cacert, -insecure and -http1 flags'
// validation, the certificate generated for -tls, the TLS configuration
// of the clients (with a count of their handshakes), and the protocol a run
// used.

package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// validateTLS checks the TLS flags against each other and -url, and loads
// -cacert into c.roots.
func (c *config) validateTLS() error {
	https := c.tls || slices.ContainsFunc(c.urls, isHTTPS)
	switch {
	case c.tls && (len(c.urls) > 0 || c.unix != ""):
		return &usageError{"tls", "serves the embedded server (or nginx) over TLS, so it cannot be combined with -url or -unix (use -cacert or -insecure for an https -url)"}
	case c.cacert != "" && c.tls:
		return &usageError{"cacert", "-tls trusts its own generated certificate; -cacert is for an https -url"}
	case c.cacert != "" && c.insecure:
		return &usageError{"cacert", "cannot be combined with -insecure, which verifies nothing"}
	case c.cacert != "" && !https:
		return &usageError{"cacert", "needs an https -url"}
	case c.insecure && c.tls:
		return &usageError{"insecure", "-tls trusts its own generated certificate; -insecure is for an https -url"}
	case c.insecure && !https:
		return &usageError{"insecure", "needs an https -url"}
	}
	if c.cacert == "" {
		return nil
	}
	b, err := os.ReadFile(c.cacert)
	if err != nil {
		return &usageError{"cacert", err.Error()}
	}
	c.roots = x509.NewCertPool()
	if !c.roots.AppendCertsFromPEM(b) {
		return &usageError{"cacert", fmt.Sprintf("no PEM certificate in %s", c.cacert)}
	}
	return nil
}

// warnTLS writes the warnings the TLS flags call for on stderr.
func warnTLS(cfg *config, stderr io.Writer) {
	if cfg.insecure {
		fmt.Fprintln(stderr, "kabench: warning: -insecure: the server's certificate is not verified")
	}
}

// generatedCert is the certificate of -tls: self-signed, ECDSA P-256, for
// 127.0.0.1, localhost and backendsName (-backends), valid for a day, in
// memory only.
type generatedCert struct {
	cert            tls.Certificate
	roots           *x509.CertPool // holds the certificate, for the clients
	certPEM, keyPEM []byte         // for nginx
}

func generateCert() (*generatedCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"kabench"}, CommonName: "kabench"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost", backendsName},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	g := &generatedCert{
		cert:    tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		roots:   x509.NewCertPool(),
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}
	g.roots.AddCert(leaf)
	return g, nil
}

// serverTLSConfig is the embedded server's TLS configuration for -tls:
// HTTP/2 and HTTP/1.1, or HTTP/1.1 only for -http1.
func (g *generatedCert) serverTLSConfig(http1 bool) *tls.Config {
	c := &tls.Config{Certificates: []tls.Certificate{g.cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	if http1 {
		c.NextProtos = []string{"http/1.1"}
	}
	return c
}

// setServerTLS sets tc, if not nil, on srv, with HTTP/2 off unless tc
// offers h2. The server's log is dropped: it logs a handshake error for
// every connection a client drops before its handshake ends (net/http
// does so with dials it no longer needs), and the clients report the
// errors that matter.
func setServerTLS(srv *http.Server, tc *tls.Config) {
	if tc == nil {
		return
	}
	srv.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLSConfig = tc
	if !slices.Contains(tc.NextProtos, "h2") {
		srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
}

// clientTLSConfig is the TLS configuration of a client: the roots of -tls
// or -cacert (nil: the system's), -insecure, and -http1's ALPN (for the
// net/http clients; keepalive gets keepalive.WithoutHTTP2). Every
// handshake, resumptions included, adds one to handshakes, if not nil: a
// cheap count, the same for the three clients, through VerifyConnection,
// which crypto/tls calls on every client handshake.
func clientTLSConfig(cfg *config, handshakes *atomic.Int64) *tls.Config {
	c := &tls.Config{RootCAs: cfg.roots, InsecureSkipVerify: cfg.insecure} // -insecure asks for it; warnTLS warns
	if cfg.http1 {
		c.NextProtos = []string{"http/1.1"}
	}
	if handshakes != nil {
		c.VerifyConnection = func(tls.ConnectionState) error {
			handshakes.Add(1)
			return nil
		}
	}
	return c
}

// setTransportTLS configures a net/http transport for cfg: its TLS
// configuration and, for -http1, no HTTP/2 (an empty TLSNextProto).
func setTransportTLS(tr *http.Transport, cfg *config, handshakes *atomic.Int64) {
	tr.TLSClientConfig = clientTLSConfig(cfg, handshakes)
	if cfg.http1 {
		tr.ForceAttemptHTTP2 = false
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
}

// isHTTPS reports whether the requests of a run go over TLS.
func isHTTPS(url string) bool { return strings.HasPrefix(strings.ToLower(url), "https://") }

// protoCounts counts the protocols of the responses of a run, by
// ProtoMajor*10 + ProtoMinor.
type protoCounts [32]int64

func (p *protoCounts) add(major, minor int) {
	if i := major*10 + minor; i >= 0 && i < len(p) {
		p[i]++
	}
}

func (p *protoCounts) merge(o *protoCounts) {
	for i, n := range o {
		p[i] += n
	}
}

// most returns the most common protocol, as HTTP/1.1 or HTTP/2, or "" if
// there were no responses.
func (p *protoCounts) most() string {
	best := -1
	for i, n := range p {
		if n > 0 && (best < 0 || n > p[best]) {
			best = i
		}
	}
	switch {
	case best < 0:
		return ""
	case best >= 20 && best%10 == 0: // HTTP/2, HTTP/3
		return fmt.Sprintf("HTTP/%d", best/10)
	}
	return fmt.Sprintf("HTTP/%d.%d", best/10, best%10)
}

// protoColumns are the columns tls.go adds to the tables: the protocol, and
// for https the TLS handshakes.
func protoColumns(url string) []string {
	if isHTTPS(url) {
		return []string{"Protocol", "TLS handshakes"}
	}
	return []string{"Protocol"}
}

func protoCells(url string, run *runResult) []string {
	p := run.Protocol
	if p == "" {
		p = "-"
	}
	if !isHTTPS(url) {
		return []string{p}
	}
	h := "-"
	if run.TLSHandshake != nil {
		h = commas(float64(*run.TLSHandshake), 0)
	}
	return []string{p, h}
}

// nginxTLS is what nginx needs for -proxy nginx -tls: it terminates TLS
// with the generated certificate, and proxies to the embedded server over
// plain HTTP, as such a proxy usually does.
type nginxTLS struct {
	cert  *generatedCert
	http1 bool
}

// configure writes the certificate and key into dir and sets the template
// variables TLS (directives in http {}) and Listen (parameters of listen),
// and returns the scheme of nginx's URLs. A nil n is plain HTTP.
func (n *nginxTLS) configure(bin, dir string, vars map[string]any) (string, error) {
	vars["TLS"], vars["Listen"] = "", ""
	if n == nil {
		return "http", nil
	}
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, n.cert.certPEM, 0o600); err != nil {
		return "", err
	}
	if err := os.WriteFile(keyPath, n.cert.keyPEM, 0o600); err != nil {
		return "", err
	}
	directives := fmt.Sprintf("    ssl_certificate %s;\n    ssl_certificate_key %s;\n", certPath, keyPath)
	listen := " ssl"
	if !n.http1 {
		switch nginxHTTP2(bin) {
		case "directive":
			directives += "    http2 on;\n"
		case "listen":
			listen += " http2"
		}
	}
	vars["TLS"], vars["Listen"] = directives, listen
	return "https", nil
}

// nginxHTTP2 says how the nginx at bin turns HTTP/2 on: "directive"
// (http2 on;, nginx 1.25.1 and later), "listen" (listen ... http2, before),
// or "" if it was built without HTTP/2.
func nginxHTTP2(bin string) string {
	out, err := exec.Command(bin, "-V").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--with-http_v2_module") {
		return ""
	}
	var major, minor, patch int
	if i := strings.Index(string(out), "nginx/"); i >= 0 {
		fmt.Sscanf(string(out[i:]), "nginx/%d.%d.%d", &major, &minor, &patch)
	}
	if major > 1 || major == 1 && (minor > 25 || minor == 25 && patch >= 1) {
		return "directive"
	}
	return "listen"
}
