// Package otelkeepalive instruments a keepalive client with OpenTelemetry:
// metrics for every attempt, retry and new connection, and a client span
// per attempt through otelhttp. It is a module of its own so that the
// keepalive library itself never depends on OpenTelemetry.
//
//	opts, err := otelkeepalive.Options() // the global providers
//	if err != nil { ... }
//	client, err := keepalive.NewClient(append(opts, keepalive.WithMaxRetries(2))...)
//
// # Metrics
//
// Metrics follow the OpenTelemetry semantic conventions for HTTP clients
// (semconv v1.43.0), measured per attempt rather than per request so that
// retries show:
//
//   - http.client.request.duration (histogram, s): each attempt, from
//     sending it to its response headers or its error. Attributes
//     http.request.method, server.address, server.port, url.scheme,
//     http.response.status_code, error.type (the status for 4xx and 5xx,
//     else the error's Go type), and http.request.resend_count on retries
//     (1 for the first retry; absent on first attempts, as the conventions
//     ask).
//   - keepalive.client.retries (counter, {retry}): retries decided, with
//     keepalive.retry.reason ("status" or "error") and the method and
//     server attributes.
//   - keepalive.client.give_ups (counter, {request}): requests returned to
//     the caller although worth a retry, with keepalive.give_up.reason.
//   - keepalive.client.budget_refusals (counter, {retry}): retries refused
//     by the retry budget.
//   - keepalive.client.connections.opened (counter, {connection}): TCP
//     connections opened, with server.address and server.port.
//
// # Traces
//
// Tracing wraps each attempt, not the whole request, in
// otelhttp.NewTransport: a request retried twice makes three client spans,
// children of the caller's span, each with its own traceparent header and
// http.request.resend_count. otelhttp's own metrics are turned off there,
// since Metrics records the same duration with the resend count.
package otelkeepalive

import (
	"context"
	"errors"
	"fmt"
	"go/token"
	"net/http"
	"reflect"
	"strconv"

	"github.com/keepalive-go/keepalive"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the meter this package uses.
const ScopeName = "github.com/keepalive-go/keepalive/otelkeepalive"

// Metric names past the semantic conventions' http.client.request.duration.
const (
	MetricRetries         = "keepalive.client.retries"
	MetricGiveUps         = "keepalive.client.give_ups"
	MetricBudgetRefusals  = "keepalive.client.budget_refusals"
	MetricConnectionsOpen = "keepalive.client.connections.opened"
)

// Attribute keys past the semantic conventions.
const (
	RetryReasonKey  = attribute.Key("keepalive.retry.reason")
	GiveUpReasonKey = attribute.Key("keepalive.give_up.reason")
)

// An Option configures Metrics, Tracing and Options.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithMeterProvider sets the MeterProvider of the metrics. Default and nil:
// otel.GetMeterProvider(), the global one.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(c *config) { c.mp = mp })
}

// WithTracerProvider sets the TracerProvider of the spans. Default and nil:
// otel.GetTracerProvider(), the global one.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(c *config) { c.tp = tp })
}

// WithPropagators sets how span contexts are written into each attempt's
// headers. Default and nil: otel.GetTextMapPropagator(), the global one.
func WithPropagators(p propagation.TextMapPropagator) Option {
	return optionFunc(func(c *config) { c.prop = p })
}

// Options returns the keepalive options for both Metrics and Tracing.
func Options(opts ...Option) ([]keepalive.Option, error) {
	m, err := Metrics(opts...)
	if err != nil {
		return nil, err
	}
	return []keepalive.Option{m, Tracing(opts...)}, nil
}

// Metrics returns a keepalive option (an Observer) that records the metrics
// of the package documentation. It fails only if the MeterProvider refuses
// to create an instrument.
func Metrics(opts ...Option) (keepalive.Option, error) {
	c := newConfig(opts)
	m, err := newInstruments(c.mp.Meter(ScopeName))
	if err != nil {
		return nil, err
	}
	return keepalive.WithObserver(m.observer()), nil
}

// Tracing returns a keepalive option that sends each attempt through
// otelhttp.NewTransport, so that every attempt is a client span, with
// http.request.resend_count set on retries.
func Tracing(opts ...Option) keepalive.Option {
	c := newConfig(opts)
	return keepalive.WithAttemptTransport(func(base http.RoundTripper) http.RoundTripper {
		return otelhttp.NewTransport(resendCount{base},
			otelhttp.WithTracerProvider(c.tp),
			otelhttp.WithPropagators(c.prop),
			otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
		)
	})
}

// Private implementation past this point.

type config struct {
	mp   metric.MeterProvider
	tp   trace.TracerProvider
	prop propagation.TextMapPropagator
}

func newConfig(opts []Option) config {
	var c config
	for _, o := range opts {
		if o != nil {
			o.apply(&c)
		}
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.prop == nil {
		c.prop = otel.GetTextMapPropagator()
	}
	return c
}

// resendCount runs inside otelhttp's span, and marks it with the attempt's
// resend count.
type resendCount struct{ next http.RoundTripper }

func (r resendCount) RoundTrip(req *http.Request) (*http.Response, error) {
	if n, ok := keepalive.AttemptFromContext(req.Context()); ok && n > 1 {
		trace.SpanFromContext(req.Context()).SetAttributes(semconv.HTTPRequestResendCount(n - 1))
	}
	return r.next.RoundTrip(req)
}

type instruments struct {
	duration metric.Float64Histogram
	retries  metric.Int64Counter
	giveUps  metric.Int64Counter
	refusals metric.Int64Counter
	opened   metric.Int64Counter
}

// durationBuckets are the semantic conventions' advice for
// http.client.request.duration.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

func newInstruments(m metric.Meter) (*instruments, error) {
	var i instruments
	var errs [5]error
	i.duration, errs[0] = m.Float64Histogram("http.client.request.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of HTTP client requests, per attempt."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	i.retries, errs[1] = m.Int64Counter(MetricRetries,
		metric.WithUnit("{retry}"), metric.WithDescription("Retries decided after a failed attempt."))
	i.giveUps, errs[2] = m.Int64Counter(MetricGiveUps,
		metric.WithUnit("{request}"), metric.WithDescription("Requests returned to the caller although worth a retry."))
	i.refusals, errs[3] = m.Int64Counter(MetricBudgetRefusals,
		metric.WithUnit("{retry}"), metric.WithDescription("Retries refused by the retry budget."))
	i.opened, errs[4] = m.Int64Counter(MetricConnectionsOpen,
		metric.WithUnit("{connection}"), metric.WithDescription("TCP connections opened."))
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("otelkeepalive: creating instruments: %w", err)
	}
	return &i, nil
}

func (i *instruments) observer() keepalive.Observer {
	return keepalive.Observer{
		OnAttemptEnd: func(e keepalive.AttemptEndEvent) {
			attrs := requestAttrs(e.Request, 4)
			if e.Status > 0 {
				attrs = append(attrs, semconv.HTTPResponseStatusCode(e.Status))
			}
			if e.Status >= 400 {
				attrs = append(attrs, semconv.ErrorTypeKey.String(strconv.Itoa(e.Status)))
			} else if e.Err != nil {
				attrs = append(attrs, errorType(e.Err))
			}
			if e.Attempt > 1 {
				attrs = append(attrs, semconv.HTTPRequestResendCount(e.Attempt-1))
			}
			i.duration.Record(ctx(e.Request), e.Duration.Seconds(), metric.WithAttributes(attrs...))
		},
		OnRetry: func(e keepalive.RetryEvent) {
			attrs := append(requestAttrs(e.Request, 1), RetryReasonKey.String(e.Reason.String()))
			i.retries.Add(ctx(e.Request), 1, metric.WithAttributes(attrs...))
		},
		OnGiveUp: func(e keepalive.GiveUpEvent) {
			attrs := append(requestAttrs(e.Request, 1), GiveUpReasonKey.String(e.Reason.String()))
			i.giveUps.Add(ctx(e.Request), 1, metric.WithAttributes(attrs...))
		},
		OnBudgetRefused: func(e keepalive.BudgetRefusedEvent) {
			i.refusals.Add(ctx(e.Request), 1, metric.WithAttributes(requestAttrs(e.Request, 0)...))
		},
		OnDial: func(e keepalive.DialEvent) {
			if e.Err != nil {
				return
			}
			attrs := make([]attribute.KeyValue, 0, 2)
			i.opened.Add(context.Background(), 1, metric.WithAttributes(hostPortAttrs(attrs, e.Host)...))
		},
	}
}

func ctx(r *http.Request) context.Context {
	if r == nil {
		return context.Background()
	}
	return r.Context()
}

// requestAttrs returns the method and server attributes of r, with room for
// extra more.
func requestAttrs(r *http.Request, extra int) []attribute.KeyValue {
	attrs := make([]attribute.KeyValue, 0, 4+extra)
	if r == nil || r.URL == nil {
		return attrs
	}
	attrs = append(attrs, method(r.Method), semconv.URLScheme(r.URL.Scheme))
	port := r.URL.Port()
	if port == "" {
		port = "80"
		if r.URL.Scheme == "https" {
			port = "443"
		}
	}
	attrs = append(attrs, semconv.ServerAddress(r.URL.Hostname()))
	if p, err := strconv.Atoi(port); err == nil {
		attrs = append(attrs, semconv.ServerPort(p))
	}
	return attrs
}

// hostPortAttrs appends the server attributes of a "host:port" address.
func hostPortAttrs(attrs []attribute.KeyValue, hostPort string) []attribute.KeyValue {
	host, port := hostPort, ""
	for i := len(hostPort) - 1; i >= 0; i-- {
		if hostPort[i] == ':' {
			host, port = hostPort[:i], hostPort[i+1:]
			break
		}
	}
	if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	attrs = append(attrs, semconv.ServerAddress(host))
	if p, err := strconv.Atoi(port); err == nil {
		attrs = append(attrs, semconv.ServerPort(p))
	}
	return attrs
}

// method returns http.request.method: the known methods as they are, any
// other as "_OTHER", which keeps the attribute's cardinality bounded.
func method(m string) attribute.KeyValue {
	switch m {
	case "":
		return semconv.HTTPRequestMethodGet
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace, "QUERY":
		return semconv.HTTPRequestMethodKey.String(m)
	}
	return semconv.HTTPRequestMethodOther
}

// errorType names the Go type of err, as otelhttp does, looking through
// keepalive's unexported wrappers so that a refused connection is a
// net.OpError wherever it came from.
func errorType(err error) attribute.KeyValue {
	for {
		t := reflect.TypeOf(err)
		if t == nil {
			return semconv.ErrorTypeOther
		}
		if t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		inner := errors.Unwrap(err)
		if t.PkgPath() == keepalivePath && !token.IsExported(t.Name()) && inner != nil {
			err = inner
			continue
		}
		if t.PkgPath() == "" || t.Name() == "" {
			return semconv.ErrorTypeKey.String(t.String())
		}
		return semconv.ErrorTypeKey.String(t.PkgPath() + "." + t.Name())
	}
}

const keepalivePath = "github.com/keepalive-go/keepalive"
