package keepalive

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// newTestTransport returns a Transport built from opts whose idle
// connections are closed when the test ends, so goleak sees no pool
// goroutines.
func newTestTransport(t testing.TB, opts ...Option) *Transport {
	t.Helper()
	tr, err := NewTransport(opts...)
	require.NoError(t, err)
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// newTestClient is newTestTransport in an http.Client.
func newTestClient(t testing.TB, opts ...Option) (*http.Client, *Transport) {
	t.Helper()
	tr := newTestTransport(t, opts...)
	return &http.Client{Transport: tr}, tr
}

// newTestHostTable is a host table whose states have no budget or breaker.
func newTestHostTable() *hostTable {
	return newHostTable(func(key string) *hostState { return &hostState{key: key} })
}
