package e2e

import (
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	if code := exitCode(err); code != 1 || !strings.Contains(err.Error(), "no such container: nosuch") ||
		strings.Count(err.Error(), "Error:") != 1 || strings.Contains(err.Error(), "exit status 1\n") {
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
	if ps := e.run("ps", "-aq"); ps != "" {
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
	e.run("stop", "-t", "1s", "c6")
	if out := e.run("stop", "-a", "-t", "1s"); out != "c5" {
		t.Fatalf("stop -a stopped %q, want the one running container", out)
	}
	if s := e.status("c5") + e.status("c6"); s != "exitedexited" {
		t.Fatalf("stop -a left %q", s)
	}
	e.run("rm", "-a")
	if ps := e.run("ps", "-aq"); ps != "" {
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

// ps lists running containers, ps -a all of them; ps, images and
// checkpoints print JSON or a Go template with --format, as Podman's do.
func TestListingsAsPodmanPrintsThem(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	e.runCounter("up", 2)
	e.runCounter("down", 2)
	e.run("checkpoint", "down")
	if out := e.run("ps", "--format", "{{.Names}} {{.State}}"); out != "up running" {
		t.Fatalf("ps lists %q, want the running container only", out)
	}
	if out := e.run("ps", "-a", "--format", "{{.Names}} {{.State}}"); !strings.Contains(out, "up running") || !strings.Contains(out, "down checkpointed") {
		t.Fatalf("ps -a lists %q", out)
	}
	var ps []struct {
		ID     string   `json:"Id"`
		Names  []string `json:"Names"`
		State  string   `json:"State"`
		Pid    int      `json:"Pid"`
		Ckpted string   `json:"CheckpointedAt"`
	}
	if err := json.Unmarshal([]byte(e.run("ps", "-a", "--format", "json")), &ps); err != nil || len(ps) != 2 {
		t.Fatalf("ps -a --format json: %v, %+v", err, ps)
	}
	for _, c := range ps {
		switch c.Names[0] {
		case "up":
			if c.State != "running" || c.Pid == 0 || len(c.ID) != 64 {
				t.Errorf("running container in JSON: %+v", c)
			}
		case "down":
			if c.State != "checkpointed" || c.Ckpted == "" {
				t.Errorf("checkpointed container in JSON: %+v", c)
			}
		}
	}
	var cks []struct{ ID, Kind, Container string }
	if err := json.Unmarshal([]byte(e.run("checkpoints", "--format", "json")), &cks); err != nil || len(cks) != 1 ||
		cks[0].Kind != "store" || cks[0].Container != "down" {
		t.Fatalf("checkpoints --format json: %v, %+v", err, cks)
	}
	var imgs []struct{ Names []string }
	if err := json.Unmarshal([]byte(e.run("images", "--format", "json")), &imgs); err != nil || len(imgs) != 1 || imgs[0].Names[0] != "localhost/busybox:e2e" {
		t.Fatalf("images --format json: %v, %+v", err, imgs)
	}
	if out := e.run("images", "--format", "{{.Names}}"); out != "localhost/busybox:e2e" {
		t.Fatalf("images --format template: %q", out)
	}
	if msg := e.fails("ps", "--format", "{{.Nope}}"); !strings.Contains(msg, "can't evaluate field Nope") {
		t.Fatalf("a template naming no field: %s", msg)
	}
	e.run("rm", "-f", "-a")
	if out := e.run("ps", "-a", "--format", "json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("an empty list in JSON is %q, want []", out)
	}
}

// checkpoint and restore take several containers, --all and --latest, as
// Podman's do.
func TestCheckpointAndRestoreSeveral(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	e.runCounter("one", 2)
	e.runCounter("two", 2)

	out, err := e.try("checkpoint", "one", "nosuch", "two")
	if exitCode(err) != 1 || strings.Count(out, "\n") != 2 {
		t.Fatalf("checkpoint of two containers and a missing one: %q, %v", out, err)
	}
	if s := e.status("one") + " " + e.status("two"); s != "checkpointed checkpointed" {
		t.Fatalf("after checkpoint one two: %s", s)
	}
	e.runCounter("three", 2)
	if out := e.run("restore", "--all"); strings.Count(out, "\n") != 1 {
		t.Fatalf("restore --all printed %q, want the two restored", out)
	}
	for _, c := range []string{"one", "two", "three"} {
		if s := e.status(c); s != "running" {
			t.Fatalf("%s is %q after restore --all", c, s)
		}
	}
	e.run("checkpoint", "--latest", "--leave-running")
	if list := e.run("checkpoints", "--format", "{{.Container}}"); list != "one\ntwo\nthree" {
		t.Fatalf("checkpoint --latest took %q", list)
	}
	e.run("checkpoint", "-a")
	if out := e.run("ps", "--format", "{{.Names}}"); out != "" {
		t.Fatalf("checkpoint -a left %q running", out)
	}
	e.run("restore", "-l")
	if s := e.status("one") + " " + e.status("two") + " " + e.status("three"); s != "checkpointed checkpointed running" {
		t.Fatalf("restore -l restored %q, want only the latest, three", s)
	}
	for want, bad := range map[string][]string{
		"take one container":      {"checkpoint", "--export", filepath.Join(t.TempDir(), "x.tar.zst"), "one", "two"},
		"not both":                {"checkpoint", "-a", "one"},
		"--all or --latest, not":  {"checkpoint", "-a", "-l"},
		"unknown command \"one\"": {"restore", "--import", filepath.Join(t.TempDir(), "x.tar.zst"), "one"},
		"in place":                {"restore", "-a", "--name", "x"},
		"names one restored":      {"restore", "one", "two", "--name", "x"},
		"requires at least 1 arg": {"checkpoint"},
	} {
		if msg := e.fails(bad...); !strings.Contains(msg, want) {
			t.Errorf("%v: %s, want it to say %q", bad, msg, want)
		}
	}
}

// logs --tail prints the last lines, logs -f follows until the container
// stops.
func TestLogsTailAndFollow(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	e.run("run", "--name", "talk", "localhost/busybox:e2e", "sh", "-c", "for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done")
	start := time.Now()
	out := e.run("logs", "-f", "talk")
	if out != "line 1\nline 2\nline 3\nline 4\nline 5" {
		t.Fatalf("logs -f printed %q", out)
	}
	if took := time.Since(start); took < time.Second || took > 20*time.Second {
		t.Fatalf("logs -f returned after %v: it should follow until the container ends (~1.5 s)", took)
	}
	if out := e.run("logs", "--tail", "2", "talk"); out != "line 4\nline 5" {
		t.Fatalf("logs --tail 2 printed %q", out)
	}
}

// --ignore-rootfs leaves the container's file changes out of a checkpoint,
// or out of a restore, as Podman's does.
func TestIgnoreRootfs(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	e.run("run", "--name", "src", "localhost/busybox:e2e", "sh", "-c", "echo kept > /marker; while true; do sleep 1; done")
	for i := 0; i < 100 && e.status("src") != "running"; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	dir := t.TempDir()
	bare, full := filepath.Join(dir, "bare.tar.zst"), filepath.Join(dir, "full.tar.zst")
	e.run("checkpoint", "src", "--export", bare, "--ignore-rootfs", "--leave-running")
	e.run("checkpoint", "src", "--export", full, "--leave-running")
	list, err := exec.Command("tar", "--zstd", "-tf", bare).Output()
	if err != nil || strings.Contains(string(list), "rootfs-diff.tar") || !strings.Contains(string(list), "config.dump") {
		t.Fatalf("checkpoint --ignore-rootfs wrote %v:\n%s", err, list)
	}
	marker := func(name string) string {
		out, _ := e.try("exec", name, "cat", "/marker")
		return strings.TrimSpace(out)
	}
	e.run("restore", "--import", bare, "--name", "bare")
	e.run("restore", "--import", full, "--name", "skipped", "--ignore-rootfs")
	e.run("restore", "--import", full, "--name", "whole")
	if got := marker("bare") + "," + marker("skipped") + "," + marker("whole"); got != ",,kept" {
		t.Fatalf("/marker in the three restores: %q, want only the last to have it", got)
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
