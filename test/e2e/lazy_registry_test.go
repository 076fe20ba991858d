package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type restoreStats struct {
	CRIU struct {
		PagesRestored int `json:"pages_restored"`
	}
	PagesFrom string `json:"pages_from"`
}

// A lazy restore of a checkpoint image the store lacks reads it where it
// lies in the registry (TLS and a password here: the helper that goes on
// fetching must authenticate too): the memory comes back exact, and once
// it is all in, the image is in the store, and restores from there.
func TestLazyRestoreFromRegistry(t *testing.T) {
	reg := startRegistry(t, true)
	e := newEnv(t)
	want := memSample(t, e, "reg")()
	ref := reg.addr + "/e2e/ckpt/reg:lazy"
	e.run(append([]string{"checkpoint", "reg", "--create-image", ref, "--push"}, reg.flags()...)...)
	e.run("rm", "reg")
	e.run("rmi", ref)

	var res restoreStats
	out := e.run(append([]string{"restore", ref, "--name", "reg2", "--lazy-pages", "--print-stats"}, reg.flags()...)...)
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if res.PagesFrom != "registry" {
		t.Fatalf("a lazy restore of an image in the registry took its pages from %q", res.PagesFrom)
	}
	if res.CRIU.PagesRestored == 0 || res.CRIU.PagesRestored > 4096 {
		t.Fatalf("CRIU restored %d pages itself; the heap is left to the lazy-pages server", res.CRIU.PagesRestored)
	}
	if got := memDigest(t, e, "reg2")(); got != want {
		t.Fatalf("memory digest after a lazy restore from the registry %s, want %s", got, want)
	}
	waitHelperGone(t, e)
	if images := e.run("images"); !strings.Contains(images, strings.TrimSuffix(ref, ":lazy")) {
		t.Fatalf("the fetched checkpoint image is not in the store:\n%s", images)
	}
	out = e.run("restore", ref, "--name", "reg3", "--lazy-pages", "--print-stats")
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if res.PagesFrom != "archive" {
		t.Fatalf("the second restore, from the stored image, took its pages from %q", res.PagesFrom)
	}
	if got := memDigest(t, e, "reg3")(); got != want {
		t.Fatalf("memory digest after a lazy restore from the stored image %s, want %s", got, want)
	}
}

// A registry that sends whole blobs instead of ranges is pulled from as
// before; one that fails leaves the store and the work directory as they
// were, and says why.
func TestLazyRestoreFromAnUnhelpfulRegistry(t *testing.T) {
	reg := startRegistry(t, false)
	proxy := startFaultyProxy(t, reg)
	e := newEnv(t)
	e.importBusybox()
	e.runCounter("src", 5)
	e.run("checkpoint", "src", "--create-image", reg.addr+"/e2e/ckpt/src:1", "--push", "--leave-running", "--tls-verify=false")
	e.run("rmi", reg.addr+"/e2e/ckpt/src:1")
	through := proxy.addr + "/e2e/ckpt/src:1"

	before := storeFiles(t, e)
	proxy.mode.Store("500")
	msg := e.fails("restore", through, "--name", "x", "--lazy-pages", "--tls-verify=false")
	if !strings.Contains(msg, "500") {
		t.Errorf("a failing registry: the error does not say so:\n%s", msg)
	}
	if after := storeFiles(t, e); after != before {
		t.Errorf("a failed lazy restore changed the store:\n%s\nvs\n%s", before, after)
	}
	if work, _ := os.ReadDir(filepath.Join(e.root, "work")); len(work) != 0 {
		t.Errorf("a failed lazy restore left %v in the work directory", work)
	}

	proxy.mode.Store("norange")
	var res restoreStats
	if err := json.Unmarshal([]byte(e.run("restore", through, "--name", "y", "--lazy-pages", "--print-stats", "--tls-verify=false")), &res); err != nil {
		t.Fatal(err)
	}
	if res.PagesFrom != "archive" {
		t.Fatalf("without ranges the image is pulled, then served from the archive; pages from %q", res.PagesFrom)
	}
	e.waitCounter("y", 1)
	if s := e.status("src"); s != "running" {
		t.Fatalf("source container is %q", s)
	}
}
