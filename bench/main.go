// Command bench measures keepalive side by side with Go's default client
// and the retry libraries people reach for: go-retryablehttp, resty v2 and
// failsafe-go. It lives in its own module so that none of them enters the
// library's go.mod.
//
//	cd bench && go run .
//
// All clients run in this one process, in alternating rounds: every round
// runs each client once per cell (scenario x concurrency), in an order
// rotated from round to round, so load from elsewhere on the machine falls
// on all of them alike. The server runs in a child process, so the
// allocations counted here are the clients' own.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	if os.Getenv(serveEnv) == "1" {
		if err := serve(); err != nil {
			fmt.Fprintln(os.Stderr, "bench server:", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(command())
}

// command runs the benchmark as the flags say and returns the exit code.
func command() int {
	var (
		dur       = flag.Duration("d", 400*time.Millisecond, "duration of one client's run in one cell and round")
		rounds    = flag.Int("rounds", 6, "rounds; every round runs every client once per cell")
		concFlag  = flag.String("c", "1,8,64", "concurrency levels, comma-separated")
		clients   = flag.String("clients", "", "clients to run, comma-separated (default: "+peerNames()+"; also: bare, an http.Transport with keepalive's settings and no retry layer, and keepalive-nowait, keepalive retrying without backoff)")
		scenarios = flag.String("scenarios", "healthy,flaky,put", "what to measure: healthy, flaky (every 4th request 503), put (64 MiB PUT, one 503)")
		putSize   = flag.Int64("put-size", 64<<20, "bytes of the PUT body")
		cpuProf   = flag.String("cpuprofile", "", "write a CPU profile of the clients to this file")
	)
	flag.Parse()
	cfg, err := parseConfig(*dur, *rounds, *concFlag, *clients, *scenarios, *putSize)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		flag.Usage()
		return 2
	}
	if *cpuProf != "" {
		stop, err := startCPUProfile(*cpuProf)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		defer stop()
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

type config struct {
	dur       time.Duration
	rounds    int
	conc      []int
	peers     []peer
	scenarios []string
	putSize   int64
}

func peerNames() string {
	var names []string
	for _, p := range peers {
		names = append(names, p.name)
	}
	return strings.Join(names, ",")
}

func parseConfig(dur time.Duration, rounds int, conc, clients, scenarios string, putSize int64) (config, error) {
	cfg := config{dur: dur, rounds: rounds, putSize: putSize}
	if dur <= 0 || rounds <= 0 || putSize <= 0 {
		return cfg, fmt.Errorf("-d, -rounds and -put-size must be positive")
	}
	for _, s := range strings.Split(conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 || n > 4096 {
			return cfg, fmt.Errorf("bad concurrency %q", s)
		}
		cfg.conc = append(cfg.conc, n)
	}
	if clients == "" {
		clients = peerNames()
	}
	for _, name := range strings.Split(clients, ",") {
		all := append(slices.Clone(peers), extraPeers...)
		i := slices.IndexFunc(all, func(p peer) bool { return p.name == strings.TrimSpace(name) })
		if i < 0 {
			return cfg, fmt.Errorf("unknown client %q (have %s, bare, keepalive-nowait)", name, peerNames())
		}
		cfg.peers = append(cfg.peers, all[i])
	}
	for _, s := range strings.Split(scenarios, ",") {
		s = strings.TrimSpace(s)
		if s != "healthy" && s != "flaky" && s != "put" {
			return cfg, fmt.Errorf("unknown scenario %q", s)
		}
		cfg.scenarios = append(cfg.scenarios, s)
	}
	return cfg, nil
}

// results are everything one invocation measured.
type results struct {
	cells map[cellKey]*cellResult
	puts  map[string][]putResult
}

func run(cfg config) error {
	fmt.Printf("bench: %s, GOMAXPROCS=%d, NumCPU=%d, %d rounds, %v per run, %s\n\n",
		runtime.Version(), runtime.GOMAXPROCS(0), runtime.NumCPU(), cfg.rounds, cfg.dur,
		time.Now().UTC().Format(time.RFC3339))
	res, err := measureAll(cfg)
	if err != nil {
		return err
	}
	for _, sc := range cfg.scenarios {
		if sc != "put" {
			printLoadTable(cfg, sc, res.cells)
		}
	}
	if slices.Contains(cfg.scenarios, "put") {
		printPutTable(cfg, res.puts)
	}
	return nil
}

func measureAll(cfg config) (results, error) {
	res := results{cells: map[cellKey]*cellResult{}, puts: map[string][]putResult{}}
	srv, err := startServer()
	if err != nil {
		return res, err
	}
	defer srv.stop()

	// Warm the process up, unmeasured: the first requests of a process pay
	// for heap growth and first-time initialisation, and would be charged
	// to whichever client ran first.
	warmUp := max(cfg.dur/4, 50*time.Millisecond)
	for _, p := range cfg.peers {
		for _, c := range []int{1, slices.Max(cfg.conc)} {
			if _, err := measureLoad(srv, p, srv.base+"/ok", c, warmUp); err != nil {
				return res, err
			}
		}
	}

	putID := 0
	for round := range cfg.rounds {
		order := rotate(cfg.peers, round)
		for _, sc := range cfg.scenarios {
			if sc == "put" {
				continue
			}
			path := "/ok"
			if sc == "flaky" {
				path = "/flaky"
			}
			for _, c := range cfg.conc {
				for _, p := range order {
					r, err := measureLoad(srv, p, srv.base+path, c, cfg.dur)
					if err != nil {
						return res, err
					}
					progress("round %d/%d %-7s c=%-3d %-13s %8.0f req/s  %d new conns  %d failed",
						round+1, cfg.rounds, sc, c, p.name, float64(r.requests)/r.elapsed.Seconds(), r.newConns, r.errors+r.non200)
					k := cellKey{sc, c, p.name}
					if res.cells[k] == nil {
						res.cells[k] = &cellResult{}
					}
					res.cells[k].add(r)
				}
			}
		}
		if slices.Contains(cfg.scenarios, "put") {
			for _, p := range order {
				putID++
				r, err := measurePut(srv, p, putURL(srv.base, putID), cfg.putSize)
				if err != nil {
					return res, err
				}
				progress("round %d/%d put %-13s peak heap %s, status %d, %d attempts",
					round+1, cfg.rounds, p.name, mib(r.peakHeap), r.status, r.attempts)
				res.puts[p.name] = append(res.puts[p.name], r)
			}
		}
	}
	return res, nil
}

func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// rotate returns ps starting at index round: each client takes each
// position in turn over the rounds.
func rotate(ps []peer, round int) []peer {
	k := round % len(ps)
	return append(slices.Clone(ps[k:]), ps[:k]...)
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}
