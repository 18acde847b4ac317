//go:build race

package keepalive

// raceEnabled is true under the race detector, which makes each request
// several times slower: the long-running tests then run fewer requests,
// enough to find races, and leave the counts to the normal run.
const raceEnabled = true
