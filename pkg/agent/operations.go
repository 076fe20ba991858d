package agent

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"
)

// operations are long operations that callers can follow and cancel. An
// operation belongs to the user who started it: its target and result
// (image names, digests, errors) are that user's business, and only an
// admin may see or cancel another's.
type operations struct {
	mu  sync.Mutex
	ops map[string]*operation
	n   int
	// keep is how long a finished operation can still be read; without a
	// bound a busy agent would hold every result it ever produced.
	keep time.Duration
}

type operation struct {
	ID     string `json:"id"`
	Action string `json:"action"`
	Target string `json:"target"`
	User   string `json:"user"`
	// Via is how User proved who they are: a certificate's CN and a
	// token's user of the same name are different callers.
	Via     string    `json:"via"`
	State   opState   `json:"state"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended,omitzero"`
	Error   string    `json:"error,omitempty"`
	Result  any       `json:"result,omitempty"`
	cancel  context.CancelFunc
}

// opState is where an operation is. The values are the API's (clients
// poll for "running" to end), so they are spelled once, here.
type opState string

const (
	opRunning   opState = "running"
	opDone      opState = "done"
	opFailed    opState = "failed"
	opCancelled opState = "cancelled"
)

func newOperations() *operations {
	return &operations{ops: map[string]*operation{}, keep: time.Hour}
}

// start records an operation of caller's.
func (o *operations) start(action, target string, caller *Identity, cancel context.CancelFunc) *operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.prune()
	o.n++
	op := &operation{ID: strconv.Itoa(o.n), Action: action, Target: target, User: caller.User, Via: caller.Via, State: opRunning,
		Started: time.Now().UTC(), cancel: cancel}
	o.ops[op.ID] = op
	return op
}

func (o *operations) finish(op *operation, result any, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	op.Ended, op.Result = time.Now().UTC(), result
	switch {
	case errors.Is(err, context.Canceled):
		op.State, op.Error = opCancelled, err.Error()
	case err != nil:
		op.State, op.Error = opFailed, err.Error()
	default:
		op.State = opDone
	}
}

// snapshot is op as it is now, for the answer that starts it.
func (o *operations) snapshot(op *operation) operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	return *op
}

// get is operation id as caller may see it; false also when it is
// someone else's, so that callers cannot learn what others run.
func (o *operations) get(id string, caller *Identity) (operation, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.prune()
	op, ok := o.ops[id]
	if !ok || !op.visibleTo(caller) {
		return operation{}, false
	}
	return *op, true
}

// cancel cancels operation id if caller may see it (see get); a finished
// operation is left as it ended.
func (o *operations) cancel(id string, caller *Identity) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	op, ok := o.ops[id]
	if !ok || !op.visibleTo(caller) {
		return false
	}
	if op.State == opRunning {
		op.cancel()
	}
	return true
}

func (op *operation) visibleTo(caller *Identity) bool {
	return caller.Role == Admin || (caller.User == op.User && caller.Via == op.Via)
}

// prune drops operations that ended more than keep ago; o.mu is held.
func (o *operations) prune() {
	for id, op := range o.ops {
		if !op.Ended.IsZero() && time.Since(op.Ended) > o.keep {
			delete(o.ops, id)
		}
	}
}
