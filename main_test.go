package keepalive

import (
	"flag"
	"testing"

	"go.uber.org/goleak"
)

// testParallel is the -parallel the package's tests run with unless the
// command line gives one. The tests marked parallel spend their time
// waiting (idle periods, Retry-After, timeouts, real servers' timers), not
// on the CPU, so more of them run at once than GOMAXPROCS, go test's
// default, allows; the tests that measure or load the CPU are not marked.
// Those waits are what the tests time, though, and under the race
// detector their requests cost several times the CPU: with 16 at once
// and a second process on one of 2 cores, loopback requests waited
// seconds for their headers. Under -race, fewer run at once.
var testParallel = map[bool]string{true: "4", false: "16"}[raceEnabled]

// TestMain fails the run if any test leaves a goroutine behind. A pooled
// connection keeps read and write goroutines, so every Transport a test
// creates must have its idle connections closed by that test
// (newTestTransport does).
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		if err := flag.Set("test.parallel", testParallel); err != nil {
			panic(err)
		}
	}
	goleak.VerifyTestMain(m)
}
