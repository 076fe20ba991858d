// Package progress reports bytes moved by a long copy (a push, a pull) on
// a terminal: total, rate, and how far along. With no terminal it says
// nothing, so scripts and logs stay clean.
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Terminal returns os.Stderr when it is a terminal, else nil: what a
// command passes as the progress writer.
func Terminal() io.Writer {
	if _, err := unix.IoctlGetTermios(int(os.Stderr.Fd()), unix.TCGETS); err != nil {
		return nil
	}
	return os.Stderr
}

// Meter counts bytes written to it and redraws one status line at most ten
// times a second. A nil *Meter, or one without an output, counts silently.
type Meter struct {
	out   io.Writer
	label string
	total int64

	mu    sync.Mutex
	n     int64
	start time.Time
	drawn time.Time
}

// New starts a meter for label; total may be 0 when unknown.
func New(out io.Writer, label string, total int64) *Meter {
	return &Meter{out: out, label: label, total: total, start: time.Now()}
}

// Write counts p; it never fails, so it can sit in an io.MultiWriter or
// io.TeeReader.
func (m *Meter) Write(p []byte) (int, error) {
	if m == nil {
		return len(p), nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.n += int64(len(p))
	m.redraw()
	return len(p), nil
}

// Set sets how much is done of how much, for copies that report totals
// rather than pass bytes through.
func (m *Meter) Set(n, total int64) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.n, m.total = n, total
	m.redraw()
}

func (m *Meter) redraw() {
	if m.out != nil && time.Since(m.drawn) > 100*time.Millisecond {
		m.draw("\r")
		m.drawn = time.Now()
	}
}

// Done draws the final line.
func (m *Meter) Done() {
	if m == nil || m.out == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.draw("\r")
	fmt.Fprintln(m.out)
}

func (m *Meter) draw(prefix string) {
	secs := time.Since(m.start).Seconds()
	rate := 0.0
	if secs > 0 {
		rate = float64(m.n) / secs / (1 << 20)
	}
	of := ""
	if m.total > 0 {
		of = fmt.Sprintf(" / %.1f MiB", float64(m.total)/(1<<20))
	}
	fmt.Fprintf(m.out, "%s%s: %.1f MiB%s, %.0f MiB/s   ", prefix, m.label, float64(m.n)/(1<<20), of, rate)
}
