package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// pki is a CA with certificates it signed, written as PEM files.
type pki struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &pki{dir: t.TempDir(), cert: cert, key: key}
	writePEM(t, filepath.Join(p.dir, "ca.pem"), "CERTIFICATE", der)
	return p
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// issue signs a certificate: a server's for 127.0.0.1, or a client's with
// the organisation that is its role. It returns the cert and key paths.
func (p *pki) issue(t *testing.T, cn, org string, server bool) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if org != "" {
		tmpl.Subject.Organization = []string{org}
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	c, k := filepath.Join(p.dir, cn+".pem"), filepath.Join(p.dir, cn+"-key.pem")
	writePEM(t, c, "CERTIFICATE", der)
	writePEM(t, k, "EC PRIVATE KEY", kb)
	return c, k
}

// agentUnderTest is `stasis agent` run by the test on the env's root.
type agentUnderTest struct {
	url      string
	ca       *pki
	auditLog string
	cmd      *exec.Cmd
	restart  func() *agentUnderTest
}

const adminToken, viewerToken = "admin-token-0123456789", "viewer-token-0123456789"

func startAgent(t *testing.T, e *env) *agentUnderTest {
	t.Helper()
	return startAgentWith(t, e, newPKI(t, "stasis-test-ca"), "", nil)
}

// startAgentWith starts an agent with the CA ca, on addr ("": a free port),
// knowing bearer tokens from authArgs (nil: the test's tokens file), with
// extra flags.
func startAgentWith(t *testing.T, e *env, ca *pki, addr string, authArgs []string, extra ...string) *agentUnderTest {
	t.Helper()
	cert, key := ca.issue(t, "agent", "", true)
	if authArgs == nil {
		tokens := filepath.Join(ca.dir, "tokens.json")
		os.WriteFile(tokens, []byte(fmt.Sprintf(`{%q: {"user": "tok-admin", "role": "admin"}, %q: {"user": "tok-viewer", "role": "viewer"}}`,
			adminToken, viewerToken)), 0o600)
		authArgs = []string{"--tokens", tokens}
	}
	if addr == "" {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		addr = l.Addr().String()
		l.Close()
	}
	a := &agentUnderTest{url: "https://" + addr, ca: ca, auditLog: filepath.Join(ca.dir, "audit.log")}
	a.restart = func() *agentUnderTest { return startAgentWith(t, e, ca, addr, authArgs, extra...) }
	cmd := e.cmd(append([]string{"agent", "--listen", addr, "--tls-cert", cert, "--tls-key", key, "--client-ca",
		filepath.Join(ca.dir, "ca.pem"), "--audit-log", a.auditLog, "--parallel", "4"}, append(authArgs, extra...)...)...)
	logf, _ := os.Create(filepath.Join(ca.dir, "agent.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a.cmd = cmd
	t.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait(); logf.Close() })
	c := a.client(t, "", "")
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := c.Get(a.url + "/healthz"); err == nil {
			resp.Body.Close()
			return a
		}
	}
	b, _ := os.ReadFile(filepath.Join(ca.dir, "agent.log"))
	t.Fatalf("agent did not start:\n%s", b)
	return nil
}

// client trusts the agent's CA and presents a certificate for cn with
// role org ("" and "": none).
func (a *agentUnderTest) client(t *testing.T, cn, org string) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(a.ca.cert)
	cfg := &tls.Config{RootCAs: pool}
	if cn != "" {
		c, k := a.ca.issue(t, cn, org, false)
		pair, err := tls.LoadX509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// call makes a request and returns the status and body.
func call(t *testing.T, c *http.Client, method, url, token string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, r)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestAgentAuthRolesAndOperations(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	a := startAgent(t, e)
	admin := a.client(t, "alice", "stasis:admin")
	viewer := a.client(t, "victor", "stasis:viewer")
	anon := a.client(t, "", "")

	if code, _ := call(t, anon, "GET", a.url+"/v1/containers", "", nil); code != 401 {
		t.Errorf("no credentials: %d, want 401", code)
	}
	if code, _ := call(t, anon, "GET", a.url+"/v1/containers", "not-a-known-token-at-all", nil); code != 401 {
		t.Errorf("unknown token: %d, want 401", code)
	}
	// A certificate of another CA does not get through the handshake.
	other := newPKI(t, "other-ca")
	oc, ok := other.issue(t, "mallory", "stasis:admin", false)
	pair, _ := tls.LoadX509KeyPair(oc, ok)
	pool := x509.NewCertPool()
	pool.AddCert(a.ca.cert)
	// GetClientCertificate presents it even though the agent asks for
	// certificates of its own CA (Go's client would otherwise send none).
	foreign := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }}}}
	if resp, err := foreign.Get(a.url + "/v1/containers"); err == nil {
		resp.Body.Close()
		t.Errorf("a certificate from another CA got an answer: %d", resp.StatusCode)
	}

	e.runCounter("web", 10)
	if code, b := call(t, viewer, "GET", a.url+"/v1/containers", "", nil); code != 200 || !strings.Contains(string(b), `"name": "web"`) {
		t.Errorf("viewer list: %d %s", code, b)
	}
	if code, _ := call(t, viewer, "POST", a.url+"/v1/containers/web/checkpoint", "", CheckpointBody{}); code != 403 {
		t.Errorf("viewer checkpoint: %d, want 403", code)
	}
	if code, _ := call(t, anon, "POST", a.url+"/v1/containers/web/checkpoint", viewerToken, CheckpointBody{}); code != 403 {
		t.Errorf("viewer token checkpoint: %d, want 403", code)
	}

	// The admin checkpoints (the container stops) and restores in place.
	code, b := call(t, admin, "POST", a.url+"/v1/containers/web/checkpoint", "", CheckpointBody{})
	if code != 200 {
		t.Fatalf("admin checkpoint: %d %s", code, b)
	}
	var res struct {
		StoreID string `json:"store_id"`
		Size    int64  `json:"size"`
		Digest  string `json:"digest"`
	}
	json.Unmarshal(b, &res)
	at := e.logCounts("web")
	if code, b := call(t, anon, "GET", a.url+"/v1/checkpoints/"+res.StoreID+"/archive", viewerToken, nil); code != 403 {
		t.Errorf("viewer download: %d %s", code, b)
	}
	code, archive := call(t, anon, "GET", a.url+"/v1/checkpoints/"+res.StoreID+"/archive", adminToken, nil)
	sum := sha256.Sum256(archive)
	if code != 200 || "sha256:"+hex.EncodeToString(sum[:]) != res.Digest {
		t.Errorf("admin download: %d, %d bytes, digest mismatch with %s", code, len(archive), res.Digest)
	}
	if code, b := call(t, admin, "POST", a.url+"/v1/restore", "", map[string]any{"checkpoint": res.StoreID}); code != 200 {
		t.Fatalf("admin restore: %d %s", code, b)
	}
	e.assertContinues("web", at[len(at)-1])

	// The kubelet's endpoint, for a container with Kubernetes labels.
	e.run("run", "--name", "kube-c", "-l", "io.kubernetes.pod.namespace=shop", "-l", "io.kubernetes.pod.name=cart",
		"-l", "io.kubernetes.container.name=app", "localhost/busybox:e2e", "sh", "-c", counterScript)
	e.waitCounter("kube-c", 10)
	code, b = call(t, admin, "POST", a.url+"/checkpoint/shop/cart/app?timeout=120", "", nil)
	var items struct{ Items []string }
	if json.Unmarshal(b, &items); code != 200 || len(items.Items) != 1 {
		t.Fatalf("kubelet endpoint: %d %s", code, b)
	}
	if s := e.status("kube-c"); s != "running" {
		t.Errorf("the kubelet's checkpoint leaves the container running; it is %q", s)
	}
	e.run("restore", "--import", items.Items[0], "--name", "kube-copy")
	e.assertContinues("kube-copy", 10)
	if code, _ := call(t, admin, "POST", a.url+"/checkpoint/shop/cart/nope", "", nil); code != 404 {
		t.Errorf("kubelet endpoint, unknown container: %d", code)
	}

	// An opted-out container is refused, with the reason, and runs on.
	e.run("run", "--name", "private", "-l", "stasis.dev/checkpoint=never", "localhost/busybox:e2e", "sh", "-c", counterScript)
	e.waitCounter("private", 2)
	if code, b := call(t, admin, "POST", a.url+"/v1/containers/private/checkpoint", "", CheckpointBody{}); code != 403 || !strings.Contains(string(b), "stasis.dev/checkpoint=never") {
		t.Errorf("opted-out checkpoint: %d %s", code, b)
	}
	if s := e.status("private"); s != "running" {
		t.Errorf("opted-out container is %q", s)
	}

	// Metrics show the operations; the audit log names who did what.
	_, m := call(t, viewer, "GET", a.url+"/metrics", "", nil)
	for _, want := range []string{`stasis_operation_duration_seconds_count{operation="checkpoint",result="ok"}`,
		`stasis_operation_duration_seconds_count{operation="restore",result="ok"}`,
		`stasis_operation_failures_total{operation="checkpoint",reason="opted_out"} 1`, "stasis_checkpoints_stored "} {
		if !strings.Contains(string(m), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	audit, _ := os.ReadFile(a.auditLog)
	for _, want := range []string{`"user":"alice","role":"admin","via":"certificate","action":"checkpoint","target":"web","status":200`,
		`"user":"victor","role":"viewer","via":"certificate","action":"checkpoint","status":403`,
		`"user":"anonymous","action":"list-containers","status":401`} {
		if !strings.Contains(string(audit), want) {
			t.Errorf("audit log lacks %s:\n%s", want, audit)
		}
	}
}

// CheckpointBody is an empty checkpoint request: stop the container, keep
// the archive in the store.
type CheckpointBody struct {
	LeaveRunning bool `json:"leave_running"`
}

// Twenty containers checkpointed, then restored, all at once through the
// API; two simultaneous checkpoints of one container conflict.
func TestAgentParallelAndConflicts(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	a := startAgent(t, e)
	admin := a.client(t, "alice", "stasis:admin")
	const n = 20
	for i := 0; i < n; i++ {
		e.run("run", "--name", fmt.Sprintf("p%d", i), "localhost/busybox:e2e", "sh", "-c", counterScript)
	}
	at := make([]int, n)
	for i := 0; i < n; i++ {
		at[i] = e.waitCounter(fmt.Sprintf("p%d", i), 10)
	}
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			code, b := call(t, admin, "POST", fmt.Sprintf("%s/v1/containers/p%d/checkpoint", a.url, i), "", CheckpointBody{})
			var res struct {
				StoreID string `json:"store_id"`
			}
			json.Unmarshal(b, &res)
			if code != 200 || res.StoreID == "" {
				t.Errorf("checkpoint p%d: %d %s", i, code, b)
			}
			ids[i] = res.StoreID
		}(i)
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if code, b := call(t, admin, "POST", a.url+"/v1/restore", "", map[string]any{"checkpoint": ids[i]}); code != 200 {
				t.Errorf("restore p%d: %d %s", i, code, b)
			}
		}(i)
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		e.assertContinues(fmt.Sprintf("p%d", i), at[i])
	}

	// Two checkpoints of one container at once: one works, one conflicts.
	e.importSample()
	e.run("run", "--name", "big", "localhost/sample:e2e", "/sample", "__sample", "--warmup", "0s", "--mib", "256")
	waitLogLine(t, e, "big", "tick 1")
	codes := make([]int, 2)
	bodies := make([][]byte, 2)
	for i := range codes {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			codes[i], bodies[i] = call(t, admin, "POST", a.url+"/v1/containers/big/checkpoint", "", CheckpointBody{LeaveRunning: true})
		}(i)
	}
	wg.Wait()
	if !(codes[0] == 200 && codes[1] == 409 || codes[0] == 409 && codes[1] == 200) {
		t.Fatalf("two checkpoints at once: %d %s / %d %s", codes[0], bodies[0], codes[1], bodies[1])
	}
	if !strings.Contains(string(bodies[0])+string(bodies[1]), "busy") {
		t.Errorf("the conflict does not say why: %s %s", bodies[0], bodies[1])
	}
}

// The agent killed with SIGKILL in the middle of a checkpoint of a 300 MiB
// process, then CRIU killed in the middle of another: the container runs
// on, thawed, no partial checkpoint is listed, and the next checkpoint
// works.
func TestAgentKilledMidCheckpoint(t *testing.T) {
	e := newEnv(t)
	a := startAgent(t, e)
	admin := a.client(t, "alice", "stasis:admin")
	e.runBig("big")

	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequest("POST", a.url+"/v1/containers/big/checkpoint", strings.NewReader(`{}`))
		if resp, err := admin.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitCRIU(t)
	a.cmd.Process.Kill()
	a.cmd.Wait()
	<-done
	a = a.restart()
	admin = a.client(t, "alice", "stasis:admin")
	checkRecovered(t, e, "after the agent was killed")

	// CRIU killed under a running agent.
	done = make(chan struct{})
	var code int
	var body []byte
	go func() {
		defer close(done)
		code, body = call(t, admin, "POST", a.url+"/v1/containers/big/checkpoint", "", CheckpointBody{})
	}()
	waitCRIU(t)
	exec.Command("pkill", "-9", "-x", "criu").Run()
	<-done
	if code == 200 {
		t.Fatalf("a checkpoint whose CRIU was killed succeeded: %s", body)
	}
	checkRecovered(t, e, "after CRIU was killed")

	if code, b := call(t, admin, "POST", a.url+"/v1/containers/big/checkpoint", "", CheckpointBody{LeaveRunning: true}); code != 200 {
		t.Fatalf("the next checkpoint: %d %s", code, b)
	}
}

// waitCRIU waits until a CRIU dump runs.
func waitCRIU(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if out, _ := exec.Command("pgrep", "-x", "criu").Output(); len(out) > 0 {
			time.Sleep(100 * time.Millisecond) // into the dump
			return
		}
	}
	t.Fatal("CRIU never started")
}

func checkRecovered(t *testing.T, e *env, when string) {
	t.Helper()
	if s := e.status("big"); s != "running" {
		t.Fatalf("%s the container is %q, want running (not frozen)", when, s)
	}
	n := lastTick(t, e, "big")
	waitLogLine(t, e, "big", fmt.Sprintf("tick %d", n+2))
	if list := strings.TrimSpace(e.run("checkpoints")); strings.Count(list, "\n") != 0 {
		t.Fatalf("%s a checkpoint is listed:\n%s", when, list)
	}
	if left, _ := filepath.Glob(filepath.Join(e.root, "checkpoints", ".partial-*")); len(left) != 0 {
		t.Fatalf("%s partial store entries remain: %v", when, left)
	}
	if left, _ := os.ReadDir(filepath.Join(e.root, "work")); len(left) != 0 {
		t.Fatalf("%s work files remain: %v", when, left)
	}
}

// A long operation can be followed and cancelled: ?async=true answers 202
// with the operation, GET shows it finish; DELETE cancels a running one and
// the container runs on.
func TestAgentAsyncOperations(t *testing.T) {
	e := newEnv(t)
	a := startAgent(t, e)
	admin := a.client(t, "alice", "stasis:admin")
	e.runBig("op")

	follow := func(id string) map[string]any {
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			_, b := call(t, admin, "GET", a.url+"/v1/operations/"+id, "", nil)
			var op map[string]any
			json.Unmarshal(b, &op)
			if op["state"] != "running" {
				return op
			}
		}
		t.Fatalf("operation %s never ended", id)
		return nil
	}
	code, b := call(t, admin, "POST", a.url+"/v1/containers/op/checkpoint?async=true", "", CheckpointBody{LeaveRunning: true})
	var op struct{ ID, State string }
	json.Unmarshal(b, &op)
	if code != 202 || op.ID == "" || op.State != "running" {
		t.Fatalf("async checkpoint: %d %s", code, b)
	}
	if end := follow(op.ID); end["state"] != "done" || end["result"] == nil {
		t.Fatalf("async checkpoint ended %v", end)
	}

	code, b = call(t, admin, "POST", a.url+"/v1/containers/op/checkpoint?async=true", "", CheckpointBody{})
	json.Unmarshal(b, &op)
	waitCRIU(t)
	if code, b := call(t, admin, "DELETE", a.url+"/v1/operations/"+op.ID, "", nil); code != 202 {
		t.Fatalf("cancel: %d %s", code, b)
	}
	if end := follow(op.ID); end["state"] != "cancelled" {
		t.Fatalf("cancelled checkpoint ended %v", end)
	}
	if s := e.status("op"); s != "running" {
		t.Fatalf("after a cancelled checkpoint the container is %q", s)
	}
	n := lastTick(t, e, "op")
	waitLogLine(t, e, "op", fmt.Sprintf("tick %d", n+2))
}

// The CLI works through the agent with --host: list, checkpoint, restore;
// a viewer's token is refused with the agent's reason; commands the agent
// does not serve say so.
func TestCLIThroughAgent(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	a := startAgent(t, e)
	remote := []string{"--host", a.url, "--host-ca", filepath.Join(a.ca.dir, "ca.pem"), "--host-token", adminToken}
	e.runCounter("far", 10)
	if out := e.run(append(remote, "ps")...); !strings.Contains(out, "far") {
		t.Fatalf("ps through the agent:\n%s", out)
	}
	id := strings.TrimSpace(e.run(append(remote, "checkpoint", "far")...))
	if out := e.run(append(remote, "checkpoints")...); !strings.Contains(out, id) {
		t.Fatalf("checkpoints through the agent lack %s:\n%s", id, out)
	}
	at := e.logCounts("far")
	e.run(append(remote, "restore", id)...)
	e.assertContinues("far", at[len(at)-1])

	viewer := []string{"--host", a.url, "--host-ca", filepath.Join(a.ca.dir, "ca.pem"), "--host-token", viewerToken}
	if msg := e.fails(append(viewer, "checkpoint", "far")...); !strings.Contains(msg, "403") {
		t.Errorf("viewer checkpoint through the agent: %s", msg)
	}
	if msg := e.fails(append(remote, "logs", "far")...); !strings.Contains(msg, "not through --host") {
		t.Errorf("a local-only command with --host: %s", msg)
	}
}

// A migration through agents: the archive downloaded from one is uploaded
// to another (here the same node, under a new name) and restored there;
// and a restore from a checkpoint image reference.
func TestAgentUploadAndImageRestore(t *testing.T) {
	e := newEnv(t)
	e.importBusybox()
	a := startAgentWith(t, e, newPKI(t, "stasis-test-ca"), "", nil, "--max-upload", "1048576")
	c := a.client(t, "", "")
	at := e.runCounter("mig", 10)
	code, b := call(t, c, "POST", a.url+"/v1/containers/mig/checkpoint", adminToken, CheckpointBody{LeaveRunning: true})
	var res struct {
		StoreID string `json:"store_id"`
	}
	if json.Unmarshal(b, &res); code != 200 {
		t.Fatalf("checkpoint: %d %s", code, b)
	}
	code, archive := call(t, c, "GET", a.url+"/v1/checkpoints/"+res.StoreID+"/archive", adminToken, nil)
	if code != 200 {
		t.Fatalf("download: %d", code)
	}
	sum := sha256.Sum256(archive)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	wrong := strings.Replace(digest, digest[len(digest)-4:], "0000", 1)
	req, _ := http.NewRequest("PUT", a.url+"/v1/restore?name=bad-digest&digest="+wrong, bytes.NewReader(archive))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	if resp, err := c.Do(req); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != 400 {
		t.Errorf("upload with a wrong digest: %d", resp.StatusCode)
	}
	req, _ = http.NewRequest("PUT", a.url+"/v1/restore?name=migrated&digest="+digest, bytes.NewReader(archive))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("upload restore: %d %s", resp.StatusCode, body)
	}
	e.assertContinues("migrated", at)

	// Bad input: a garbage upload, a body with an unknown field, a
	// container that does not exist.
	req, _ = http.NewRequest("PUT", a.url+"/v1/restore?name=junk", strings.NewReader(strings.Repeat("not a tar ", 1000)))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	if resp, err := c.Do(req); err != nil {
		t.Fatal(err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(body), "corrupt or truncated") {
			t.Errorf("garbage upload: %d %s", resp.StatusCode, body)
		}
	}
	req, _ = http.NewRequest("PUT", a.url+"/v1/restore?name=huge", bytes.NewReader(make([]byte, 2<<20)))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	if resp, err := c.Do(req); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != 413 {
		t.Errorf("upload above --max-upload: %d, want 413", resp.StatusCode)
	}
	if work, _ := os.ReadDir(filepath.Join(e.root, "work")); len(work) != 0 {
		t.Errorf("refused uploads left %v", work)
	}
	if code, b := call(t, c, "POST", a.url+"/v1/containers/mig/checkpoint", adminToken, map[string]any{"leave_runing": true}); code != 400 {
		t.Errorf("misspelt field: %d %s", code, b)
	}
	if code, b := call(t, c, "POST", a.url+"/v1/containers/ghost/checkpoint", adminToken, CheckpointBody{}); code != 404 {
		t.Errorf("unknown container: %d %s", code, b)
	}

	e.run("checkpoint", "mig", "--create-image", "localhost/mig-ckpt:1", "--leave-running")
	if code, b := call(t, c, "POST", a.url+"/v1/restore", adminToken, map[string]any{"image": "localhost/mig-ckpt:1", "name": "from-image"}); code != 200 {
		t.Fatalf("restore from an image reference: %d %s", code, b)
	}
	e.assertContinues("from-image", at)
}

// SIGTERM lets a running operation finish: the checkpoint lands, the
// container runs on, and the agent exits cleanly.
func TestAgentGracefulShutdown(t *testing.T) {
	e := newEnv(t)
	a := startAgent(t, e)
	admin := a.client(t, "alice", "stasis:admin")
	e.runBig("gs")
	code, b := call(t, admin, "POST", a.url+"/v1/containers/gs/checkpoint?async=true", "", CheckpointBody{LeaveRunning: true})
	if code != 202 {
		t.Fatalf("async checkpoint: %d %s", code, b)
	}
	waitCRIU(t)
	a.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- a.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("agent exit after SIGTERM: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("agent did not stop after SIGTERM")
	}
	if list := e.run("checkpoints"); strings.Count(strings.TrimSpace(list), "\n") != 1 {
		t.Fatalf("the checkpoint running at SIGTERM did not land:\n%s", list)
	}
	if s := e.status("gs"); s != "running" {
		t.Fatalf("container is %q", s)
	}
}
