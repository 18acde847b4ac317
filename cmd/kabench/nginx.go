// This file runs nginx in front of the embedded server for -proxy nginx:
// its configuration (that of the original measurements), start in a temp
// dir, the wait until it listens, and a clean stop.

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// nginxConf is the configuration of the original measurements. One nginx
// serves two ports: one proxies with upstream keep-alive (keepalive 8,
// HTTP/1.1, no Connection header passed on), the other without it, as
// nginx does by default (HTTP/1.0 upstream, a new connection per request).
var nginxConf = template.Must(template.New("nginx.conf").Parse(`# Written by kabench; removed when it exits.
{{.User}}
worker_processes 1;
daemon off;
master_process on;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    client_body_temp_path {{.Dir}}/client_body;
    proxy_temp_path {{.Dir}}/proxy;
    fastcgi_temp_path {{.Dir}}/fastcgi;
    uwsgi_temp_path {{.Dir}}/uwsgi;
    scgi_temp_path {{.Dir}}/scgi;
{{.TLS}}

    keepalive_requests 5000;
    keepalive_timeout 120;

    upstream app_keepalive {
        server {{.Upstream}};
        keepalive 8;
    }
    upstream app_plain {
        server {{.Upstream}};
    }

    server {
        listen 127.0.0.1:{{.PortOn}}{{.Listen}};
        location / {
            proxy_pass http://app_keepalive;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:{{.PortOff}}{{.Listen}};
        location / {
            proxy_pass http://app_plain;
        }
    }
}
`))

// nginxProcess is a running nginx.
type nginxProcess struct {
	cmd     *exec.Cmd
	dir     string
	exited  chan struct{} // closed when cmd.Wait returns
	waitErr error
	urlOn   string // upstream keep-alive on
	urlOff  string // upstream keep-alive off
}

// errNoNginx is returned when -proxy nginx finds no nginx binary.
var errNoNginx = errors.New("-proxy nginx: no nginx on PATH (install it, for example with apt-get install nginx-light; " +
	"Debian puts it in /usr/sbin, which a user's PATH may lack)")

// startNginx starts nginx in front of upstream (host:port) and returns once
// it accepts connections on both ports, or fails within timeout.
// With tc (tls.go) it serves HTTPS.
func startNginx(ctx context.Context, upstream string, timeout time.Duration, tc *nginxTLS) (*nginxProcess, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		return nil, errNoNginx
	}
	// The ports are picked free and handed to nginx; another process may
	// take one in between, so a failed start is tried again.
	var last error
	for range 3 {
		p, err := tryStartNginx(ctx, bin, upstream, timeout, tc)
		if err == nil {
			return p, nil
		}
		last = err
		if ctx.Err() != nil || !strings.Contains(err.Error(), "in use") {
			break
		}
	}
	return nil, last
}

func tryStartNginx(ctx context.Context, bin, upstream string, timeout time.Duration, tc *nginxTLS) (*nginxProcess, error) {
	dir, err := os.MkdirTemp("", "kabench-nginx-")
	if err != nil {
		return nil, err
	}
	// Started as root, nginx runs its worker as nobody, which must reach
	// the temp paths inside dir.
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	ports, err := freePorts(2)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	userDirective, err := nginxUser(upstream) // socket_unix.go
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	vars := map[string]any{
		"Dir": dir, "Upstream": upstream, "PortOn": ports[0], "PortOff": ports[1], "User": userDirective,
	}
	scheme, err := tc.configure(bin, dir, vars) // tls.go
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	var conf bytes.Buffer
	if err := nginxConf.Execute(&conf, vars); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, conf.Bytes(), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// -e: without it nginx opens its compiled-in error log before reading
	// the configuration, which fails for a user who cannot write there.
	cmd := exec.Command(bin, "-p", dir+"/", "-c", confPath, "-e", filepath.Join(dir, "error.log"))
	cmd.Dir = dir
	setProcessGroup(cmd)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("starting nginx: %w", err)
	}
	p := &nginxProcess{
		cmd: cmd, dir: dir, exited: make(chan struct{}),
		urlOn:  scheme + "://127.0.0.1:" + strconv.Itoa(ports[0]) + "/",
		urlOff: scheme + "://127.0.0.1:" + strconv.Itoa(ports[1]) + "/",
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	if err := p.waitListening(ctx, ports, timeout); err != nil {
		p.stop(timeout)
		msg := strings.TrimSpace(out.String() + "\n" + p.errorLog())
		return nil, fmt.Errorf("nginx did not start: %w\n%s", err, msg)
	}
	return p, nil
}

// waitListening polls the ports until nginx accepts on both, nginx exits,
// or timeout passes.
func (p *nginxProcess) waitListening(ctx context.Context, ports []int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var d net.Dialer
	for _, port := range ports {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		for {
			c, err := d.DialContext(ctx, "tcp", addr)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-p.exited:
				return fmt.Errorf("nginx exited: %v", p.waitErr)
			case <-ctx.Done():
				return fmt.Errorf("nothing listens on %s: %w", addr, context.Cause(ctx))
			case <-tick.C:
			}
		}
	}
	return nil
}

// stop asks nginx to finish gracefully (SIGQUIT), waits up to timeout,
// then kills its process group, and removes its temp dir.
func (p *nginxProcess) stop(timeout time.Duration) error {
	defer os.RemoveAll(p.dir)
	select {
	case <-p.exited:
		return nil
	default:
	}
	_ = quitProcess(p.cmd)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.exited:
		return nil
	case <-t.C:
	}
	_ = killProcessGroup(p.cmd)
	<-p.exited
	return fmt.Errorf("nginx did not stop within %v of SIGQUIT; killed it", timeout)
}

func (p *nginxProcess) errorLog() string {
	b, err := os.ReadFile(filepath.Join(p.dir, "error.log"))
	if err != nil {
		return ""
	}
	return string(b)
}

// errorLogLines is how much of nginx's error log a failed probe shows.
const errorLogLines = 10

// diagnose returns the last lines of nginx's error log, which say why a
// request through nginx failed (an upstream that refused, a socket it may
// not open), for the error of a failed probe.
func (p *nginxProcess) diagnose() string {
	lines := strings.Split(strings.TrimSpace(p.errorLog()), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return "nginx's error log is empty"
	}
	lines = lines[max(0, len(lines)-errorLogLines):]
	return "the end of nginx's error log:\n  " + strings.Join(lines, "\n  ")
}

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
