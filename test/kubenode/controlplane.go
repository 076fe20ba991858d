package kubenode

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	nodev1 "k8s.io/api/node/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ControlPlane is etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler on the host, with the cluster's CA: what a single Node and
// a Cluster share.
type ControlPlane struct {
	Kubeconfig string // system:masters
	Config     *rest.Config
	Client     *kubernetes.Clientset
	// AdminCert and AdminKey are the system:masters client pair, which
	// the kubelets accept too; CA is the cluster CA.
	AdminCert, AdminKey, CA string

	dir    string // PKI, etcd's data, kubeconfigs, logs
	k8sBin string
	// advertise is the address the kubelets and the pods reach the API
	// server at; it is in the serving certificate.
	advertise string
	pki       *pki
	procs     procs
	ports     struct{ etcd, etcdPeer, api, cm, sched int }
}

func newControlPlane(dir, k8sBin, advertise string) (*ControlPlane, error) {
	cp := &ControlPlane{dir: dir, k8sBin: k8sBin, advertise: advertise, procs: procs{logDir: filepath.Join(dir, "logs")}}
	for _, p := range []*int{&cp.ports.etcd, &cp.ports.etcdPeer, &cp.ports.api, &cp.ports.cm, &cp.ports.sched} {
		var err error
		if *p, err = freePort(); err != nil {
			return nil, err
		}
	}
	return cp, nil
}

func (cp *ControlPlane) path(parts ...string) string {
	return filepath.Join(append([]string{cp.dir}, parts...)...)
}

// APIPort is the API server's port, on every address of the host: pods
// reach it at the advertised address (no kube-proxy serves the service
// address).
func (cp *ControlPlane) APIPort() int { return cp.ports.api }

// apiURL is the API server as a kubelet on host reaches it at.
func (cp *ControlPlane) apiURL(host string) string {
	return "https://" + net.JoinHostPort(host, fmt.Sprint(cp.ports.api))
}

// writePKI makes the CA and the certificates of the control plane and its
// clients; the kubelets' come with each node (issueKubeletCerts).
func (cp *ControlPlane) writePKI(context.Context) error {
	dir := cp.path("pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	p, err := newPKI(dir)
	if err != nil {
		return fmt.Errorf("cluster CA: %w", err)
	}
	cp.pki, cp.CA = p, p.path("ca.pem")
	certs := []struct {
		file, cn, org string
		ips           []net.IP
		dns           []string
	}{
		{"apiserver", "kube-apiserver", "",
			[]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(cp.advertise), net.ParseIP("10.96.0.1")},
			[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		{"admin", "admin", "system:masters", nil, nil},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters", nil, nil},
		{"controller-manager", "system:kube-controller-manager", "", nil, nil},
		{"scheduler", "system:kube-scheduler", "", nil, nil},
	}
	for _, c := range certs {
		if _, _, err := p.issue(c.file, c.cn, c.org, c.ips, c.dns); err != nil {
			return fmt.Errorf("issue %s: %w", c.file, err)
		}
	}
	cp.AdminCert, cp.AdminKey = p.path("admin.pem"), p.path("admin-key.pem")
	// The service-account signing key: any key the API server can read.
	if err := os.Link(p.path("ca-key.pem"), p.path("sa-key.pem")); err != nil {
		return err
	}
	for _, u := range []string{"admin", "controller-manager", "scheduler"} {
		if err := writeKubeconfig(cp.path(u+".kubeconfig"), cp.apiURL("127.0.0.1"), cp.CA, u,
			p.path(u+".pem"), p.path(u+"-key.pem")); err != nil {
			return err
		}
	}
	cp.Kubeconfig = cp.path("admin.kubeconfig")
	return nil
}

func writeKubeconfig(path, server, ca, user, cert, key string) error {
	return os.WriteFile(path, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: stasis, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: %s, user: {client-certificate: %q, client-key: %q}}]
contexts: [{name: stasis, context: {cluster: stasis, user: %s}}]
current-context: stasis
`, server, ca, user, cert, key, user)), 0o600)
}

// startAPIServer starts etcd and kube-apiserver and waits until the API
// server is ready.
func (cp *ControlPlane) startAPIServer(ctx context.Context) error {
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		return fmt.Errorf("etcd is needed (Debian's etcd-server): %w", err)
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", cp.ports.etcd)
	peer := fmt.Sprintf("http://127.0.0.1:%d", cp.ports.etcdPeer)
	if err := cp.procs.start("etcd", nil, hostCommand(etcd, "--name", "stasis", "--data-dir", cp.path("etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "stasis="+peer)); err != nil {
		return err
	}
	p := cp.pki.path
	if err := cp.procs.start("kube-apiserver", nil, hostCommand(filepath.Join(cp.k8sBin, "kube-apiserver"),
		// All addresses: in-cluster pods reach it at the advertised
		// address (there is no kube-proxy for the service address).
		"--etcd-servers", client, "--bind-address", "0.0.0.0", "--secure-port", fmt.Sprint(cp.ports.api),
		"--advertise-address", cp.advertise,
		"--tls-cert-file", p("apiserver.pem"), "--tls-private-key-file", p("apiserver-key.pem"),
		"--client-ca-file", cp.CA,
		"--kubelet-client-certificate", p("apiserver-kubelet-client.pem"), "--kubelet-client-key", p("apiserver-kubelet-client-key.pem"),
		"--kubelet-certificate-authority", cp.CA, "--kubelet-preferred-address-types", "InternalIP,Hostname",
		"--service-account-key-file", p("sa-key.pem"), "--service-account-signing-key-file", p("sa-key.pem"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
		"--service-cluster-ip-range", "10.96.0.0/16", "--allow-privileged=true")); err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		return err
	}
	cp.Config = cfg
	if cp.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	// readyz includes the RBAC bootstrap, without which the controller
	// manager cannot even read its configuration and exits.
	return poll(ctx, 90*time.Second, "kube-apiserver", func() (bool, error) {
		b, err := cp.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return false, fmt.Errorf("%v: %s", err, b)
		}
		_, err = cp.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
}

func (cp *ControlPlane) startControllers(context.Context) error {
	p := cp.pki.path
	kc := cp.path("controller-manager.kubeconfig")
	if err := cp.procs.start("kube-controller-manager", nil, hostCommand(filepath.Join(cp.k8sBin, "kube-controller-manager"),
		"--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
		"--service-account-private-key-file", p("sa-key.pem"), "--root-ca-file", cp.CA,
		"--use-service-account-credentials=true", "--cluster-signing-cert-file", cp.CA,
		"--cluster-signing-key-file", p("ca-key.pem"), "--service-cluster-ip-range", "10.96.0.0/16",
		"--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(cp.ports.cm))); err != nil {
		return err
	}
	sc := cp.path("scheduler.kubeconfig")
	return cp.procs.start("kube-scheduler", nil, hostCommand(filepath.Join(cp.k8sBin, "kube-scheduler"),
		"--kubeconfig", sc, "--authentication-kubeconfig", sc, "--authorization-kubeconfig", sc,
		"--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(cp.ports.sched)))
}

// finish waits for what the first pod needs of the control plane once a
// node is Ready: the default ServiceAccount (pods are refused without it)
// and the RuntimeClass "stasis".
func (cp *ControlPlane) finish(ctx context.Context) error {
	if err := poll(ctx, 60*time.Second, "default ServiceAccount", func() (bool, error) {
		_, err := cp.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	}); err != nil {
		return err
	}
	_, err := cp.Client.NodeV1().RuntimeClasses().Create(ctx, &nodev1.RuntimeClass{
		ObjectMeta: metav1.ObjectMeta{Name: "stasis"}, Handler: "stasis"}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// stop ends the control plane's components, the API server before etcd,
// which it would otherwise retry forever.
func (cp *ControlPlane) stop() {
	if cp != nil {
		cp.procs.stop(nil)
	}
}

// LogTail is the end of a component's log, for a failure message.
func (cp *ControlPlane) LogTail(name string, lines int) string {
	return cp.procs.logTail(name, lines)
}

// KubeletClient is an HTTP client for the kubelets' API as the admin.
func (cp *ControlPlane) KubeletClient() (*http.Client, error) {
	cfg := rest.CopyConfig(cp.Config)
	cfg.Timeout = 5 * time.Minute
	return rest.HTTPClientFor(cfg)
}

// poll calls ok every 250 ms until it is done, limit passes or ctx ends;
// the error says what was awaited and ok's last error.
func poll(ctx context.Context, limit time.Duration, what string, ok func() (bool, error)) error {
	var last error
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); {
		done, err := ok()
		if done {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not reached in %s: %v", what, limit, last)
}

func logf(w io.Writer, format string, args ...any) {
	if w != nil {
		fmt.Fprintf(w, "[kubenode] "+format+"\n", args...)
	}
}
