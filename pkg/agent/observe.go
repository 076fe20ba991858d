package agent

import (
	"encoding/json"
	"io"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Audit writes one JSON line per request that reached a handler: who asked
// for what, on which target, when, the result and how long it took.
type Audit struct {
	mu sync.Mutex
	w  io.Writer
}

// AuditRecord is one line of the audit log.
type AuditRecord struct {
	Time       time.Time `json:"time"`
	User       string    `json:"user"`
	Role       Role      `json:"role,omitempty"`
	Via        string    `json:"via,omitempty"`
	Action     string    `json:"action"`
	Target     string    `json:"target,omitempty"`
	Status     int       `json:"status"`
	Error      string    `json:"error,omitempty"`
	DurationMS int64     `json:"duration_ms"`
}

func (a *Audit) record(r AuditRecord) {
	if a == nil || a.w == nil {
		return
	}
	b, _ := json.Marshal(r)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.w.Write(append(b, '\n'))
}

// metrics are the agent's Prometheus metrics, on their own registry so
// that tests and embedders get no global state.
type metrics struct {
	reg        *prometheus.Registry
	duration   *prometheus.HistogramVec
	failures   *prometheus.CounterVec
	bytes      *prometheus.CounterVec
	stored     prometheus.Gauge
	storedSize prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "stasis_operation_duration_seconds", Help: "Duration of agent operations.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 12),
		}, []string{"operation", "result"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stasis_operation_failures_total", Help: "Failed operations by reason.",
		}, []string{"operation", "reason"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stasis_bytes_total", Help: "Checkpoint bytes written and read.",
		}, []string{"direction"}),
		stored: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stasis_checkpoints_stored", Help: "Checkpoints in the node's store.",
		}),
		storedSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stasis_checkpoints_stored_bytes", Help: "Total size of the checkpoints in the node's store.",
		}),
	}
	m.reg.MustRegister(m.duration, m.failures, m.bytes, m.stored, m.storedSize,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}
