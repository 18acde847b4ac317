package keepalive

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if any test leaves a goroutine behind. Idle
// connections of http.DefaultTransport are closed first: their read and
// write loops are pool state, not leaks. Every keepalive Transport a test
// creates must be closed by that test (see newTestTransport).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.Cleanup(func(int) {}),
	)
}
