package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stasis-dev/stasis/pkg/engine"
)

// testServer is an agent whose tokens are alice (admin), bob (admin) and
// vera (viewer); nothing it is asked may reach the engine.
func testServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.Engine = &engine.Engine{}
	cfg.Auth = &CertOrToken{tokens: map[string]Identity{
		"alice-0123456789": {User: "alice", Role: Admin, Via: "token"},
		"bob-0123456789ab": {User: "bob", Role: Admin, Via: "token"},
		"vera-0123456789a": {User: "vera", Role: Viewer, Via: "token"},
	}}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func do(h http.Handler, method, path, token, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.Header.Set("Authorization", "Bearer "+token)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func call(t *testing.T, h http.Handler, method, path, token string) int {
	t.Helper()
	return do(h, method, path, token, "").Code
}

func TestOperationsBelongToTheirCaller(t *testing.T) {
	ops := newOperations()
	cancelled := false
	op := ops.start("checkpoint", "web", &Identity{User: "vera", Via: "token"}, func() { cancelled = true })
	for _, c := range []struct {
		caller Identity
		sees   bool
	}{
		{Identity{User: "vera", Role: Viewer, Via: "token"}, true},
		// A certificate with the CN of the token's user is someone else.
		{Identity{User: "vera", Role: Viewer, Via: "certificate"}, false},
		{Identity{User: "walt", Role: Viewer, Via: "token"}, false},
		{Identity{User: "alice", Role: Admin}, true},
	} {
		if _, ok := ops.get(op.ID, &c.caller); ok != c.sees {
			t.Errorf("%s sees %s's operation: %v, want %v", c.caller.User, op.User, ok, c.sees)
		}
	}
	if ops.cancel(op.ID, &Identity{User: "walt", Role: Viewer}) || cancelled {
		t.Fatal("another user cancelled the operation")
	}
	if !ops.cancel(op.ID, &Identity{User: "vera", Role: Viewer, Via: "token"}) || !cancelled {
		t.Fatal("its starter could not cancel the operation")
	}

	// Over HTTP: another user's operation does not exist.
	s := testServer(t, Config{})
	mine := s.ops.start("checkpoint", "web", &Identity{User: "vera", Via: "token"}, func() {})
	path := "/v1/operations/" + mine.ID
	if code := call(t, s.Handler(), "GET", path, "vera-0123456789a"); code != http.StatusOK {
		t.Errorf("its starter: %d", code)
	}
	if code := call(t, s.Handler(), "GET", path, "alice-0123456789"); code != http.StatusOK {
		t.Errorf("an admin: %d", code)
	}
	bobs := s.ops.start("checkpoint", "db", &Identity{User: "bob", Via: "token"}, func() {})
	if code := call(t, s.Handler(), "GET", "/v1/operations/"+bobs.ID, "vera-0123456789a"); code != http.StatusNotFound {
		t.Errorf("a viewer reading bob's operation: %d, want 404", code)
	}
}

func TestFinishedOperationsArePruned(t *testing.T) {
	ops := newOperations()
	ops.keep = time.Hour
	admin := &Identity{User: "alice", Role: Admin}
	done := ops.start("checkpoint", "a", &Identity{User: "alice", Via: "token"}, func() {})
	running := ops.start("checkpoint", "b", &Identity{User: "alice", Via: "token"}, func() {})
	ops.finish(done, nil, nil)
	if _, ok := ops.get(done.ID, admin); !ok {
		t.Fatal("a just finished operation is gone")
	}
	// Two hours on, with no sleep: it ended longer than keep ago.
	ops.mu.Lock()
	done.Ended = time.Now().UTC().Add(-2 * time.Hour)
	ops.mu.Unlock()
	if _, ok := ops.get(done.ID, admin); ok {
		t.Fatal("a finished operation outlived keep")
	}
	if _, ok := ops.get(running.ID, admin); !ok {
		t.Fatal("a running operation was pruned")
	}
	if len(ops.ops) != 1 {
		t.Fatalf("%d operations kept, want 1", len(ops.ops))
	}
}

// The states are what clients poll for: the JSON spells them as before.
func TestOperationStates(t *testing.T) {
	ops := newOperations()
	caller := &Identity{User: "alice", Via: "token"}
	for _, c := range []struct {
		err   error
		state opState
		json  string
	}{
		{nil, opDone, `"state":"done"`},
		{errors.New("criu failed"), opFailed, `"state":"failed"`},
		{fmt.Errorf("checkpoint web: %w", context.Canceled), opCancelled, `"state":"cancelled"`},
	} {
		op := ops.start("checkpoint", "web", caller, func() {})
		if op.State != opRunning {
			t.Fatalf("a started operation is %q", op.State)
		}
		if b, _ := json.Marshal(ops.snapshot(op)); !strings.Contains(string(b), `"state":"running"`) {
			t.Fatalf("a started operation reads %s", b)
		}
		ops.finish(op, nil, c.err)
		if op.State != c.state {
			t.Errorf("finished with %v: %q, want %q", c.err, op.State, c.state)
		}
		if b, _ := json.Marshal(ops.snapshot(op)); !strings.Contains(string(b), c.json) {
			t.Errorf("finished with %v: reads %s, want %s", c.err, b, c.json)
		}
	}
}
