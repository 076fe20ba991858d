package e2e

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// apiServer is a real etcd and kube-apiserver (built by hack/k8s/build.sh)
// started by the test, with RBAC.
type apiServer struct {
	url        string
	kubeconfig string // system:masters, for the agent and the test
	client     *kubernetes.Clientset
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startAPIServer(t *testing.T) *apiServer {
	t.Helper()
	etcd := need(t, "etcd")
	bin := filepath.Join(envOr("STASIS_K8S_BIN", "/var/cache/stasis/k8s/bin"), "kube-apiserver")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("kube-apiserver is needed (hack/k8s/build.sh builds it): %v", err)
	}
	dir := t.TempDir()
	ca := newPKI(t, "kube-ca")
	serving, servingKey := ca.issue(t, "kube-apiserver", "", true)
	admin, adminKey := ca.issue(t, "admin", "system:masters", false)
	sa, _ := rsa.GenerateKey(rand.Reader, 2048)
	saPub, _ := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	writePEM(t, filepath.Join(dir, "sa.pub"), "PUBLIC KEY", saPub)
	writePEM(t, filepath.Join(dir, "sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(sa))

	client, peer, port := freePort(t), freePort(t), freePort(t)
	start := func(name string, args ...string) {
		cmd := exec.Command(name, args...)
		logf, _ := os.Create(filepath.Join(dir, filepath.Base(name)+".log"))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The API server goes first: it retries etcd forever otherwise.
		t.Cleanup(func() {
			cmd.Process.Signal(os.Interrupt)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			logf.Close()
		})
	}
	start(etcd, "--name", "stasis-e2e", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", client),
		"--advertise-client-urls", fmt.Sprintf("http://127.0.0.1:%d", client),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peer),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peer),
		"--initial-cluster", fmt.Sprintf("stasis-e2e=http://127.0.0.1:%d", peer))
	start(bin, "--etcd-servers", fmt.Sprintf("http://127.0.0.1:%d", client),
		"--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(port),
		// Any address but loopback: it is only advertised.
		"--advertise-address", "192.0.2.2",
		"--tls-cert-file", serving, "--tls-private-key-file", servingKey,
		"--client-ca-file", filepath.Join(ca.dir, "ca.pem"),
		"--service-account-key-file", filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--authorization-mode", "RBAC", "--service-cluster-ip-range", "10.96.0.0/16")

	s := &apiServer{url: fmt.Sprintf("https://127.0.0.1:%d", port), kubeconfig: filepath.Join(dir, "admin.kubeconfig")}
	cfg := &rest.Config{Host: s.url, TLSClientConfig: rest.TLSClientConfig{
		CAFile: filepath.Join(ca.dir, "ca.pem"), CertFile: admin, KeyFile: adminKey}}
	os.WriteFile(s.kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: admin, user: {client-certificate: %q, client-key: %q}}]
contexts: [{name: e2e, context: {cluster: e2e, user: admin}}]
current-context: e2e
`, s.url, filepath.Join(ca.dir, "ca.pem"), admin, adminKey)), 0o600)
	var err error
	if s.client, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	pair, _ := tls.LoadX509KeyPair(admin, adminKey)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}}}
	last := ""
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		resp, err := hc.Get(s.url + "/readyz?verbose")
		if err != nil {
			last = err.Error()
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		last = string(body)
		if resp.StatusCode == 200 {
			// The bootstrap controller makes the default namespace.
			_, err := s.client.CoreV1().Namespaces().Get(context.Background(), "default", metaGet)
			if err == nil {
				return s
			}
			last = err.Error()
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "kube-apiserver.log"))
	var keep []string
	for _, l := range strings.Split(string(b), "\n") {
		// klog's error lines start with E; the rest is noise here.
		if strings.HasPrefix(l, "E") || strings.Contains(l, "Serving securely") {
			keep = append(keep, l)
		}
	}
	t.Fatalf("kube-apiserver did not become ready (%s):\n%s", last, tail(strings.Join(keep, "\n"), 40))
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
