package e2e

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// stop, rm and rmi try every name, as Podman's do: a name that is gone
// is reported and the others are still acted on, and the exit status says
// that something failed. rm -f cleans up whatever is there.
func TestEveryNameIsTried(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	e.runCounter("c1", 1)
	e.runCounter("c2", 1)

	out, err := e.try("stop", "-t", "1s", "nosuch", "c1", "c2")
	if code := exitCode(err); code != 1 || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("stop of a missing and two running containers: exit %d, %v", code, err)
	}
	if out != "c1\nc2\n" {
		t.Fatalf("stop printed %q, want the two it stopped", out)
	}
	for _, c := range []string{"c1", "c2"} {
		if s := e.status(c); s != "exited" {
			t.Fatalf("%s is %q after stop, want exited", c, s)
		}
	}
	if _, err := e.try("rm", "c1", "nosuch", "c2"); exitCode(err) != 1 {
		t.Fatalf("rm of two containers and a missing one: %v", err)
	}
	if ps := e.run("ps", "-q"); ps != "" {
		t.Fatalf("rm left %q", ps)
	}
	if msg := e.run("rm", "-i", "nosuch"); msg != "" {
		t.Fatalf("rm -i of a missing container printed %q", msg)
	}

	// One rm -f cleans up whatever is there, running or gone.
	e.runCounter("c3", 1)
	e.runCounter("c4", 1)
	if out := e.run("rm", "-f", "gone", "c3", "c4"); out != "c3\nc4" {
		t.Fatalf("rm -f printed %q", out)
	}
	e.runCounter("c5", 1)
	e.runCounter("c6", 1)
	e.run("stop", "-a", "-t", "1s")
	if s := e.status("c5") + e.status("c6"); s != "exitedexited" {
		t.Fatalf("stop -a left %q", s)
	}
	e.run("rm", "-a")
	if ps := e.run("ps", "-q"); ps != "" {
		t.Fatalf("rm -a left %q", ps)
	}
	if msg := e.fails("rm", "-a", "c1"); !strings.Contains(msg, "not both") {
		t.Fatalf("rm -a with a name: %s", msg)
	}

	if _, err := e.try("rmi", "localhost/nosuch:1", "localhost/busybox:e2e"); exitCode(err) != 1 {
		t.Fatalf("rmi of a missing and a present image: %v", err)
	}
	if images := e.run("images"); strings.Contains(images, "busybox") {
		t.Fatalf("rmi stopped at the missing image:\n%s", images)
	}
}

// exitCode is the exit status in e.try's error, 0 for none.
func exitCode(err error) int {
	var x *exec.ExitError
	if err == nil {
		return 0
	}
	if errors.As(err, &x) {
		return x.ExitCode()
	}
	return -1
}
