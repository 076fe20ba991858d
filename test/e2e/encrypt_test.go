package e2e

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"os"
	"os/exec"
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

	e.runCounter("enc", 10)
	archive := filepath.Join(dir, "enc.tar.zst")
	e.run("checkpoint", "enc", "--export", archive, "--encrypt-to", right.Recipient().String(), "--leave-running")
	if b, _ := os.ReadFile(archive); !strings.HasPrefix(string(b), "age-encryption.org/v1") {
		t.Fatal("the archive is not an age file")
	}
	before := e.run("ps", "-aq")
	if msg := e.fails("restore", "--import", archive, "--name", "x"); !strings.Contains(msg, "encrypted") {
		t.Errorf("restore without an identity: %s", msg)
	}
	if msg := e.fails("--identity", wrongFile, "restore", "--import", archive, "--name", "x"); !strings.Contains(msg, "cannot open it") {
		t.Errorf("restore with a wrong identity: %s", msg)
	}
	if after := e.run("ps", "-aq"); after != before {
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
	e.runCounter("dg", 3)
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

	// An export records its digest beside it; an import checks it.
	export := filepath.Join(t.TempDir(), "dg.tar.zst")
	e.run("checkpoint", "dg", "--export", export, "--leave-running")
	// sha256sum's format, and the frame index's digest on a comment line
	// that sha256sum -c passes over.
	sum, err := os.ReadFile(export + ".sha256")
	lines := strings.Split(strings.TrimSpace(string(sum)), "\n")
	if err != nil || len(lines) != 2 || !strings.HasSuffix(lines[0], "  dg.tar.zst") ||
		!strings.HasPrefix(lines[1], "# stasis frame index sha256:") {
		t.Fatalf("digest file: %q %v", sum, err)
	}
	check := exec.Command("sha256sum", "--check", "--strict", "dg.tar.zst.sha256")
	check.Dir = filepath.Dir(export)
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum -c refuses the digest file: %v: %s", err, out)
	}
	b, _ = os.ReadFile(export)
	b[len(b)/3] ^= 0x01
	os.WriteFile(export, b, 0o600)
	if msg := e.fails("restore", "--import", export, "--name", "copy2"); !strings.Contains(msg, "altered or damaged") {
		t.Errorf("import of a damaged export: %s", msg)
	}
}

// An encrypted checkpoint image (ocicrypt, JWE with an RSA key): pushed,
// removed, restored by stasis with the private key, refused without it or
// with another; Podman pulls it with --decryption-key and restores it.
func TestEncryptedCheckpointImage(t *testing.T) {
	reg := startRegistry(t, false)
	e := newEnv(t)
	e.importBusybox()
	dir := t.TempDir()
	pub, priv := rsaKeyPair(t, dir, "node")
	_, otherPriv := rsaKeyPair(t, dir, "other")
	base := reg.addr + "/e2e/busybox:1"
	e.run("push", "localhost/busybox:e2e", base, "--tls-verify=false")
	e.run("pull", base, "--tls-verify=false")
	e.run("run", "--name", "sealed", base, "sh", "-c", counterScript)
	at := e.waitCounter("sealed", 10)
	ref := reg.addr + "/e2e/ckpt/sealed:1"
	e.run("checkpoint", "sealed", "--create-image", ref, "--encrypt-image-key", pub, "--push", "--tls-verify=false", "--leave-running")
	e.run("rmi", ref)
	if msg := e.fails("restore", ref, "--name", "a", "--tls-verify=false"); !strings.Contains(msg, "encrypted") {
		t.Errorf("restore without the key: %s", msg)
	}
	if msg := e.fails("--decryption-key", otherPriv, "restore", ref, "--name", "b", "--tls-verify=false"); !strings.Contains(msg, "cannot open it") {
		t.Errorf("restore with another key: %s", msg)
	}
	e.run("--decryption-key", priv, "restore", ref, "--name", "opened", "--tls-verify=false")
	e.assertContinues("opened", at)

	// The layer in the registry is ocicrypt's format, which CRI-O and
	// containerd (imgcrypt) decrypt with the node's key: Podman 4.3 has no
	// --decryption-key to try it with.
	img := remoteImage(t, ref)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	l := m.Layers[0]
	if !strings.HasSuffix(string(l.MediaType), "+zstd+encrypted") || l.Annotations["org.opencontainers.image.enc.keys.jwe"] == "" {
		t.Fatalf("layer is not an ocicrypt JWE layer: %+v", l)
	}
	layers, _ := img.Layers()
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 4)
	rc.Read(head)
	rc.Close()
	if string(head) == "\x28\xb5\x2f\xfd" {
		t.Fatal("the registry holds the archive in the clear")
	}
}

func rsaKeyPair(t *testing.T, dir, name string) (pub, priv string) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pkix, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	pub, priv = filepath.Join(dir, name+".pub.pem"), filepath.Join(dir, name+".pem")
	writePEM(t, pub, "PUBLIC KEY", pkix)
	writePEM(t, priv, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k))
	return pub, priv
}
