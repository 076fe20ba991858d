package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
)

// An encrypted archive restores only with the identity it was encrypted
// to; a wrong or missing one fails before anything is made.
func TestEncryptedArchive(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	right, _ := age.GenerateX25519Identity()
	wrong, _ := age.GenerateX25519Identity()
	dir := t.TempDir()
	rightFile, wrongFile := filepath.Join(dir, "right.key"), filepath.Join(dir, "wrong.key")
	os.WriteFile(rightFile, []byte(right.String()+"\n"), 0o600)
	os.WriteFile(wrongFile, []byte(wrong.String()+"\n"), 0o600)

	e.run("run", "--name", "enc", "localhost/busybox:e2e", "sh", "-c", counterScript)
	e.waitCounter("enc", 10)
	archive := filepath.Join(dir, "enc.tar.zst")
	e.run("checkpoint", "enc", "--export", archive, "--encrypt-to", right.Recipient().String(), "--leave-running")
	if b, _ := os.ReadFile(archive); !strings.HasPrefix(string(b), "age-encryption.org/v1") {
		t.Fatal("the archive is not an age file")
	}
	before := e.run("ps")
	if msg := e.fails("restore", "--import", archive, "--name", "x"); !strings.Contains(msg, "encrypted") {
		t.Errorf("restore without an identity: %s", msg)
	}
	if msg := e.fails("--identity", wrongFile, "restore", "--import", archive, "--name", "x"); !strings.Contains(msg, "cannot open it") {
		t.Errorf("restore with a wrong identity: %s", msg)
	}
	if after := e.run("ps"); after != before {
		t.Errorf("failed restores left containers:\n%s", after)
	}
	if work, _ := os.ReadDir(filepath.Join(e.root, "work")); len(work) != 0 {
		t.Errorf("failed restores left work files: %v", work)
	}
	e.run("--identity", rightFile, "restore", "--import", archive, "--name", "dec")
	e.assertContinues("dec", 10)
	if tree := e.run("--identity", rightFile, "inspect", archive, "--ps-tree"); !strings.Contains(tree, "sh") {
		t.Errorf("inspect of the encrypted archive:\n%s", tree)
	}
}

// A stored archive with one byte flipped fails its digest check.
func TestFlippedByteFailsDigest(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	e.run("run", "--name", "dg", "localhost/busybox:e2e", "sh", "-c", counterScript)
	e.waitCounter("dg", 3)
	e.run("checkpoint", "dg", "--leave-running")
	files, _ := filepath.Glob(filepath.Join(e.root, "checkpoints", "*", "checkpoint.tar.zst"))
	if len(files) != 1 {
		t.Fatalf("stored archives: %v", files)
	}
	b, _ := os.ReadFile(files[0])
	b[len(b)/2] ^= 0x01
	os.WriteFile(files[0], b, 0o600)
	if msg := e.fails("restore", "dg", "--name", "copy"); !strings.Contains(msg, "altered or damaged") {
		t.Errorf("restore of a damaged archive: %s", msg)
	}
	if msg := e.fails("inspect", "dg"); !strings.Contains(msg, "altered or damaged") {
		t.Errorf("inspect of a damaged archive: %s", msg)
	}
}
