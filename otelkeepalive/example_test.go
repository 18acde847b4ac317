package otelkeepalive_test

import (
	"context"
	"fmt"

	"github.com/keepalive-go/keepalive"
	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/keepalive-go/keepalive/otelkeepalive"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// A request that fails twice shows as three attempts: three client spans
// and three durations. In production, pass the providers of your OTLP or
// Prometheus exporter, or none for the global ones.
func ExampleOptions() {
	s, _ := keepalivetest.Start(keepalivetest.Status(503), keepalivetest.Status(503), keepalivetest.Status(200))
	defer s.Close()

	reader := sdkmetric.NewManualReader()
	spans := tracetest.NewSpanRecorder()
	opts, err := otelkeepalive.Options(
		otelkeepalive.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))),
		otelkeepalive.WithTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))),
	)
	if err != nil {
		fmt.Println(err)
		return
	}
	client, _ := keepalive.NewClient(append(opts, keepalive.WithBackoff(0, 0))...)
	defer client.CloseIdleConnections()

	resp, err := client.Get(s.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(context.Background(), &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if sum, ok := m.Data.(metricdata.Sum[int64]); ok {
			fmt.Println(m.Name, sum.DataPoints[0].Value)
		}
	}
	fmt.Println("client spans:", len(spans.Ended()))
	// Unordered output:
	// keepalive.client.retries 2
	// keepalive.client.connections.opened 1
	// client spans: 3
}
