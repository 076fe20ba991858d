package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stasis-dev/stasis/pkg/provenance"
)

// Signed checkpoint images through a real registry: a signature made with
// a generated key goes up with `stasis push` as cosign stores it, verifies
// there, comes back with `stasis pull`, and an agent that has the
// cluster's key restores the signed image from the registry, refuses an
// unsigned and a foreign-signed one before fetching their layers, and
// admits the foreign one once its key is trusted.
func TestSignedCheckpointImage(t *testing.T) {
	reg := startRegistry(t, false)
	e := newEnv(t)
	e.importBusybox()
	dir := t.TempDir()
	cluster, admin := filepath.Join(dir, "cluster"), filepath.Join(dir, "admin")
	e.run("key", "generate", cluster)
	e.run("key", "generate", admin)
	if msg := e.fails("key", "generate", cluster); !strings.Contains(msg, "not overwritten") {
		t.Fatalf("key generate over an existing key: %s", msg)
	}
	if fi, err := os.Stat(cluster + ".key"); err != nil {
		t.Fatal(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode %v, want 0600", fi.Mode())
	}

	at := e.runCounter("orig", 10)
	repo := reg.addr + "/e2e/ckpt/"
	signed, unsigned, foreign := repo+"signed:v1", repo+"unsigned:v1", repo+"foreign:v1"
	for _, ref := range []string{signed, unsigned, foreign} {
		e.run("checkpoint", "orig", "--create-image", ref, "--leave-running")
	}
	if msg := e.fails("image", "sign", "localhost/busybox:e2e", "--key", cluster+".key"); !strings.Contains(msg, "not a checkpoint image") {
		t.Fatalf("signing a run image: %s", msg)
	}
	e.run("image", "sign", signed, "--key", cluster+".key", "--namespace", "shop", "--cluster", "e2e", "--pod", "web-0")
	e.run("image", "sign", foreign, "--key", admin+".key")
	for _, ref := range []string{signed, unsigned, foreign} {
		e.run(append([]string{"push", ref}, reg.flags()...)...)
	}

	// In the registry, cosign's signature image of the manifest (not of
	// the index around it), which verifies with the public key.
	ckpt := remoteImage(t, signed)
	manifest, _ := ckpt.Digest()
	layers, _ := ckpt.Layers()
	archive, _ := layers[0].Digest()
	sigTag := provenance.SignatureTag(manifest)
	sig := remoteImage(t, repo+"signed:"+sigTag)
	if m, _ := sig.Manifest(); len(m.Layers) != 1 || m.Layers[0].MediaType != provenance.MediaType ||
		m.Layers[0].Annotations[provenance.SignatureAnnotation] == "" {
		t.Fatalf("signature image in the registry: %+v", m)
	}
	trust, err := provenance.LoadTrust(cluster+".pub", nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := trust.Verify(sig, manifest, provenance.Expect{Namespace: "shop", Archive: archive.String()})
	if err != nil {
		t.Fatal(err)
	}
	if c := v.Claims; c.Namespace != "shop" || c.Cluster != "e2e" || c.Pod != "web-0" || c.Archive != archive.String() || c.Time.IsZero() {
		t.Fatalf("claims %+v", c)
	}

	// rmi takes the signatures along; a pull brings one back.
	e.run("rmi", signed, unsigned, foreign)
	// (Signature images are not listed: look in the store's index.)
	index, err := os.ReadFile(filepath.Join(e.root, "images", "oci", "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(index), ".sig") {
		t.Fatalf("signature images left after rmi:\n%s", index)
	}
	e.run(append([]string{"pull", signed}, reg.flags()...)...)
	if images := e.run("images"); !strings.Contains(images, ", signature stored") {
		t.Fatalf("the pull did not bring the signature:\n%s", images)
	}
	e.run("rmi", signed)

	ca := newPKI(t, "stasis-test-ca")
	a := startAgentWith(t, e, ca, "", nil, "--signing-key", cluster+".key")
	viaAgent := func(a *agentUnderTest, args ...string) []string {
		return append([]string{"--host", a.url, "--host-ca", filepath.Join(ca.dir, "ca.pem"), "--host-token", adminToken}, args...)
	}
	e.run(viaAgent(a, "restore", signed, "--name", "from-signed")...)
	e.assertContinues("from-signed", at)
	before := storeFiles(t, e)
	if msg := e.fails(viaAgent(a, "restore", unsigned, "--name", "from-unsigned")...); !strings.Contains(msg, "is not signed") {
		t.Fatalf("restore of an unsigned image with trust: %s", msg)
	}
	if msg := e.fails(viaAgent(a, "restore", foreign, "--name", "from-foreign")...); !strings.Contains(msg, "no key this node trusts") {
		t.Fatalf("restore of a foreign-signed image: %s", msg)
	}
	if after := storeFiles(t, e); after != before {
		t.Fatalf("refused restores changed the store:\n%s\nvs\n%s", before, after)
	}

	a.cmd.Process.Signal(os.Interrupt)
	a.cmd.Wait()
	a = startAgentWith(t, e, ca, "", nil, "--signing-key", cluster+".key", "--trusted-key", admin+".pub")
	e.run(viaAgent(a, "restore", foreign, "--name", "from-foreign")...)
	e.assertContinues("from-foreign", at)
}
