// This file holds the shape of the requests kabench sends: -H headers
// (Host among them), the body of -body or -body-file, and the request
// built from them for every client alike.

package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/textproto"
	"os"
	"strings"
)

// headerFlag is -H, given once per header: "Name: value".
type headerFlag []string

func (h *headerFlag) String() string { return strings.Join(*h, "; ") }

func (h *headerFlag) Set(s string) error {
	*h = append(*h, s)
	return nil
}

// parseHeaders turns the -H values into a header and the Host, which
// net/http takes from Request.Host, not from the header.
func parseHeaders(values []string) (http.Header, string, error) {
	var header http.Header
	host := ""
	for _, v := range values {
		name, value, ok := strings.Cut(v, ":")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		switch {
		case !ok:
			return nil, "", &usageError{"H", fmt.Sprintf("%q has no colon (want 'Name: value')", v)}
		case !validMethod(name): // a field name is a token, as a method is
			return nil, "", &usageError{"H", fmt.Sprintf("%q is not a header name", name)}
		case strings.ContainsAny(value, "\r\n\x00"):
			return nil, "", &usageError{"H", fmt.Sprintf("the value of %s has a line break or NUL", name)}
		}
		switch textproto.CanonicalMIMEHeaderKey(name) {
		case "Host":
			host = value
			continue
		case "Content-Length", "Transfer-Encoding":
			return nil, "", &usageError{"H", fmt.Sprintf("%s follows from the body; give the body with -body or -body-file", name)}
		}
		if header == nil {
			header = http.Header{}
		}
		header.Add(name, value)
	}
	return header, host, nil
}

// loadBody sets c.body from -body-file, or to -body zero bytes.
func (c *config) loadBody() error {
	if !c.set["body-file"] {
		c.body = make([]byte, c.bodySize)
		return nil
	}
	if c.set["body"] {
		return &usageError{"body-file", "cannot be combined with -body; give one of them"}
	}
	b, err := os.ReadFile(c.bodyFile)
	if err != nil {
		return &usageError{"body-file", err.Error()}
	}
	c.body, c.bodySize = b, len(b)
	return nil
}

// newRequest builds one request of the run: cfg's method, headers, Host
// and body. Every request gets a header of its own, so that no client can
// change another's.
func newRequest(ctx context.Context, cfg *config, url string) (*http.Request, error) {
	var req *http.Request
	var err error
	if len(cfg.body) == 0 {
		req, err = http.NewRequestWithContext(ctx, cfg.method, url, nil)
	} else {
		// A bytes.Reader gives the request a GetBody, so it may be retried.
		req, err = http.NewRequestWithContext(ctx, cfg.method, url, bytes.NewReader(cfg.body))
	}
	if err != nil {
		return nil, err
	}
	if cfg.header != nil {
		req.Header = cfg.header.Clone()
	}
	if cfg.host != "" {
		req.Host = cfg.host
	}
	return req, nil
}
