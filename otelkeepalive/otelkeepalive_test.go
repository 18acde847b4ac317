package otelkeepalive_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"testing"

	"github.com/keepalive-go/keepalive"
	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/keepalive-go/keepalive/otelkeepalive"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type telemetry struct {
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
}

func newTelemetry(t *testing.T) (*telemetry, []otelkeepalive.Option) {
	tel := &telemetry{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(tel.reader))
	tel.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tel.spans))
	t.Cleanup(func() {
		_ = mp.Shutdown(context.Background())
		_ = tel.tp.Shutdown(context.Background())
	})
	return tel, []otelkeepalive.Option{
		otelkeepalive.WithMeterProvider(mp),
		otelkeepalive.WithTracerProvider(tel.tp),
		otelkeepalive.WithPropagators(propagation.TraceContext{}),
	}
}

func (tel *telemetry) metrics(t *testing.T) map[string]metricdata.Metrics {
	var rm metricdata.ResourceMetrics
	require.NoError(t, tel.reader.Collect(context.Background(), &rm))
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		assert.Equal(t, otelkeepalive.ScopeName, sm.Scope.Name, "otelhttp's own metrics are off")
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

func newClient(t *testing.T, opts ...keepalive.Option) *http.Client {
	c, err := keepalive.NewClient(opts...)
	require.NoError(t, err)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func serverAttrs(t *testing.T, rawURL string) (string, int) {
	u, err := url.Parse(rawURL)
	require.NoError(t, err)
	port, err := strconv.Atoi(u.Port())
	require.NoError(t, err)
	return u.Hostname(), port
}

func TestARequestRetriedTwiceMakesThreeAttemptsInMetricsAndSpans(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(503), keepalivetest.Status(502), keepalivetest.Status(200).Body("ok"))
	tel, opts := newTelemetry(t)
	kopts, err := otelkeepalive.Options(opts...)
	require.NoError(t, err)
	c := newClient(t, append(kopts, keepalive.WithBackoff(0, 0))...)

	ctx, parent := tel.tp.Tracer("test").Start(context.Background(), "caller")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/x", nil)
	require.NoError(t, err)
	resp, err := c.Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	resp.Body.Close()
	parent.End()
	require.Equal(t, "ok", string(body))
	host, port := serverAttrs(t, s.URL)

	// Spans: one client span per attempt, each a child of the caller's.
	var clients []sdktrace.ReadOnlySpan
	for _, sp := range tel.spans.Ended() {
		if sp.SpanKind() == trace.SpanKindClient {
			clients = append(clients, sp)
		}
	}
	require.Len(t, clients, 3)
	headers := s.Headers()
	require.Len(t, headers, 3)
	wantStatus := []int64{503, 502, 200}
	for i, sp := range clients {
		attrs := attrMap(sp.Attributes())
		assert.Equal(t, parent.SpanContext().SpanID(), sp.Parent().SpanID(), "attempt %d", i+1)
		assert.Equal(t, parent.SpanContext().TraceID(), sp.SpanContext().TraceID())
		assert.Equal(t, wantStatus[i], attrs["http.response.status_code"].AsInt64())
		if i == 0 {
			assert.NotContains(t, attrs, attribute.Key("http.request.resend_count"), "absent on the first attempt")
		} else {
			assert.Equal(t, int64(i), attrs["http.request.resend_count"].AsInt64())
		}
		if wantStatus[i] >= 500 {
			assert.Equal(t, codes.Error, sp.Status().Code)
		}
		// Each attempt carried its own span's context to the server.
		assert.Contains(t, headers[i].Get("Traceparent"), sp.SpanContext().SpanID().String())
	}

	// Metrics: three durations, one per attempt, told apart by their
	// resend count.
	ms := tel.metrics(t)
	hist := ms["http.client.request.duration"].Data.(metricdata.Histogram[float64])
	assert.Equal(t, "s", ms["http.client.request.duration"].Unit)
	require.Len(t, hist.DataPoints, 3)
	byResend := map[int64]metricdata.HistogramDataPoint[float64]{}
	for _, dp := range hist.DataPoints {
		rc, _ := dp.Attributes.Value("http.request.resend_count")
		byResend[rc.AsInt64()] = dp
	}
	for resend, status := range wantStatus {
		dp, ok := byResend[int64(resend)]
		require.True(t, ok, "resend_count %d", resend)
		assert.Equal(t, uint64(1), dp.Count)
		assert.Positive(t, dp.Sum)
		a := attrMap(dp.Attributes.ToSlice())
		assert.Equal(t, "GET", a["http.request.method"].AsString())
		assert.Equal(t, host, a["server.address"].AsString())
		assert.Equal(t, int64(port), a["server.port"].AsInt64())
		assert.Equal(t, "http", a["url.scheme"].AsString())
		assert.Equal(t, status, a["http.response.status_code"].AsInt64())
		if status >= 400 {
			assert.Equal(t, strconv.Itoa(int(status)), a["error.type"].AsString())
		} else {
			assert.NotContains(t, a, attribute.Key("error.type"))
		}
	}

	retries := ms[otelkeepalive.MetricRetries].Data.(metricdata.Sum[int64])
	require.Len(t, retries.DataPoints, 1)
	assert.Equal(t, int64(2), retries.DataPoints[0].Value)
	reason, _ := retries.DataPoints[0].Attributes.Value(otelkeepalive.RetryReasonKey)
	assert.Equal(t, "status", reason.AsString())

	opened := ms[otelkeepalive.MetricConnectionsOpen].Data.(metricdata.Sum[int64])
	require.Len(t, opened.DataPoints, 1)
	assert.Equal(t, int64(1), opened.DataPoints[0].Value, "the retries reused the connection")
	assert.NotContains(t, ms, otelkeepalive.MetricGiveUps, "nothing gave up")
}

func TestGiveUpsAndErrorsAreMeasured(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close()) // connects are refused

	tel, opts := newTelemetry(t)
	m, err := otelkeepalive.Metrics(opts...)
	require.NoError(t, err)
	c := newClient(t, m, keepalive.WithMaxRetries(1), keepalive.WithBackoff(0, 0))
	_, err = c.Get("http://" + addr + "/")
	require.Error(t, err)

	ms := tel.metrics(t)
	hist := ms["http.client.request.duration"].Data.(metricdata.Histogram[float64])
	require.Len(t, hist.DataPoints, 2)
	for _, dp := range hist.DataPoints {
		et, _ := dp.Attributes.Value("error.type")
		assert.Equal(t, "net.OpError", et.AsString(), "keepalive's wrapper is looked through")
		assert.False(t, dp.Attributes.HasValue("http.response.status_code"))
	}
	giveUps := ms[otelkeepalive.MetricGiveUps].Data.(metricdata.Sum[int64])
	require.Len(t, giveUps.DataPoints, 1)
	reason, _ := giveUps.DataPoints[0].Attributes.Value(otelkeepalive.GiveUpReasonKey)
	assert.Equal(t, "retries exhausted", reason.AsString())
	retries := ms[otelkeepalive.MetricRetries].Data.(metricdata.Sum[int64])
	reason, _ = retries.DataPoints[0].Attributes.Value(otelkeepalive.RetryReasonKey)
	assert.Equal(t, "error", reason.AsString())
	assert.NotContains(t, ms, otelkeepalive.MetricConnectionsOpen, "no connection was opened")
}

func TestTracingAloneMakesASpanPerAttempt(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(500), keepalivetest.Status(200))
	tel, opts := newTelemetry(t)
	c := newClient(t, otelkeepalive.Tracing(opts...), keepalive.WithBackoff(0, 0))
	resp, err := c.Get(s.URL)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Len(t, tel.spans.Ended(), 2)
	assert.Empty(t, tel.metrics(t), "no metrics without Metrics")
}

func attrMap(kvs []attribute.KeyValue) map[attribute.Key]attribute.Value {
	m := make(map[attribute.Key]attribute.Value, len(kvs))
	for _, kv := range kvs {
		m[kv.Key] = kv.Value
	}
	return m
}
