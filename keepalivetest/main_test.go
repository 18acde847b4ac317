package keepalivetest_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a test leaves a goroutine behind: every client
// a test makes closes its idle connections in t.Cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
