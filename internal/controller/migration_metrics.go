package controller

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
)

// MigrationMetrics are what Prometheus sees of Migrations once they end:
// how many, how long the pod was down, how long they took and how many
// checkpoint bytes moved (eagerly, or lazily as the restored pod touched
// them).
type MigrationMetrics struct {
	ended    *prometheus.CounterVec
	downtime *prometheus.HistogramVec
	duration *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
}

// NewMigrationMetrics registers the metrics with reg (the manager's,
// controller-runtime's metrics.Registry, in stasis-controller).
func NewMigrationMetrics(reg prometheus.Registerer) *MigrationMetrics {
	buckets := prometheus.ExponentialBuckets(0.1, 2, 12) // 0.1 s to 205 s
	m := &MigrationMetrics{
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stasis_migrations_total", Help: "Migrations ended, by phase (Succeeded, Failed) and reason.",
		}, []string{"phase", "reason"}),
		downtime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "stasis_migration_downtime_seconds", Help: "From the source's freeze to its copy's Ready, of Migrations that succeeded.",
			Buckets: buckets,
		}, []string{"mode", "lazy_pages"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "stasis_migration_duration_seconds", Help: "From a Migration's start to its end, by phase.",
			Buckets: buckets,
		}, []string{"phase"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stasis_migration_bytes_total", Help: "Checkpoint bytes of Migrations that succeeded, moved before the restore (eager) or as the pod touched them (lazy).",
		}, []string{"transfer"}),
	}
	reg.MustRegister(m.ended, m.downtime, m.duration, m.bytes)
	return m
}

// observe records a Migration that ended; a nil MigrationMetrics records
// nothing.
func (mm *MigrationMetrics) observe(m *stasisv1.Migration) {
	if mm == nil {
		return
	}
	phase := string(m.Status.Phase)
	mm.ended.WithLabelValues(phase, m.Status.Reason).Inc()
	if m.Status.StartTime != nil && m.Status.CompletionTime != nil {
		mm.duration.WithLabelValues(phase).Observe(m.Status.CompletionTime.Sub(m.Status.StartTime.Time).Seconds())
	}
	if m.Status.Phase != stasisv1.MigrationSucceeded {
		return
	}
	mm.downtime.WithLabelValues(string(mode(m)), strconv.FormatBool(m.Spec.LazyPages)).Observe(float64(m.Status.DowntimeMillis) / 1000)
	transfer := "eager"
	if m.Spec.LazyPages {
		transfer = "lazy"
	}
	mm.bytes.WithLabelValues(transfer).Add(float64(m.Status.BytesMoved))
}
