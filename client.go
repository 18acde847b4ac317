// This file holds NewClient, the entry point most programs need. The
// Transport it wraps is in transport.go and retry.go.

package keepalive

import "net/http"

// NewClient returns an *http.Client whose Transport is a *Transport built
// from opts (see NewTransport). With no options it is ready for production:
// a pool that reuses connections at any realistic concurrency, a 5 s
// connect and 10 s read timeout, and up to 3 retries of idempotent requests
// on 429, 500, 501, 502, 503, 504 and connection errors.
//
// The client has no overall Timeout: the read timeout bounds every wait, so
// a long download that keeps moving is never cut off. Bound a whole call
// with the request's context. Create one client and reuse it.
func NewClient(opts ...Option) (*http.Client, error) {
	t, err := NewTransport(opts...)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: t}, nil
}
