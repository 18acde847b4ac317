package keepalive

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if any test leaves a goroutine behind. A pooled
// connection keeps read and write goroutines, so every Transport a test
// creates must have its idle connections closed by that test
// (newTestTransport does).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
