package treesnap

import (
	"fmt"
	"testing"
	"time"
)

// MustTake is Take for a test: an error ends the test.
func MustTake(t testing.TB, base, skip string) Snapshot {
	t.Helper()
	s, err := Take(base, skip)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Watchdog crashes the process when a call outlives d: Go's fuzzer records
// the input of a crashed worker, but has no timeout of its own. Call stop
// when the call returns.
func Watchdog(d time.Duration) (stop func()) {
	tm := time.AfterFunc(d, func() { panic(fmt.Sprintf("still running after %v: a hang", d)) })
	return func() { tm.Stop() }
}
