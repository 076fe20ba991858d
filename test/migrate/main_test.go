// Package migrate tests Migrations on a real two-node Kubernetes started
// once for the package by test/kubenode: node-a and node-b, each with its
// own runtime (containerd on node-a, CRI-O on node-b), kubelet and stasis
// agent in its own network and mount namespaces, and one stasis controller, all bound to the RBAC of
// config/rbac.
package migrate

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	"github.com/stasis-dev/stasis/test/kubenode"
)

const agentPort = 7443

var (
	cluster *kubenode.Cluster
	// stackDir holds the agents' and the controller's logs.
	stackDir string
	kc       client.Client
	bin      string
	// agents are the running agents by node name; stopAgent and
	// startAgent let a test take one away.
	agents = map[string]*exec.Cmd{}
	// notRoot, when set, is why every test skips.
	notRoot string
	// controllerMetrics is the controller's metrics endpoint.
	controllerMetrics string
)

func requireCluster(t *testing.T) {
	t.Helper()
	if notRoot != "" {
		t.Skip(notRoot)
	}
}

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		notRoot = "migration tests need root (two kubelets, containerd, runc and CRIU)"
		os.Exit(m.Run())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	if bin, err = os.MkdirTemp("", "stasis-migrate-bin-"); err != nil {
		fmt.Println(err)
		return 1
	}
	defer os.RemoveAll(bin)
	for _, c := range []string{"stasis", "stasis-runc", "stasis-controller"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, c), "../../cmd/"+c)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Printf("build %s: %v\n%s", c, err, out)
			return 1
		}
	}
	key := filepath.Join(bin, "cluster")
	if out, err := exec.Command(filepath.Join(bin, "stasis"), "key", "generate", key).CombinedOutput(); err != nil {
		fmt.Printf("stasis key generate: %v\n%s", err, out)
		return 1
	}
	ctx := context.Background()
	// containerd on one node, CRI-O on the other: every migration crosses
	// runtimes. The figures move pods by hand too, which only CRI-O can
	// restore (containerd 2.4 has no restore from a checkpoint image):
	// from node-b to a second CRI-O node.
	nodes := []kubenode.NodeSpec{{Name: "node-a"}, {Name: "node-b", Runtime: kubenode.RuntimeCRIO}}
	if benchFigures() {
		nodes = append(nodes, kubenode.NodeSpec{Name: "node-c", Runtime: kubenode.RuntimeCRIO})
	}
	cluster, err = kubenode.StartCluster(ctx, kubenode.ClusterOptions{
		Nodes:            nodes,
		StasisRunc:       filepath.Join(bin, "stasis-runc"),
		StasisClusterKey: key + ".pub",
		Log:              os.Stdout,
	})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer cluster.Stop()
	stop, err := startStasis(ctx, key+".key")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer stop()
	return m.Run()
}

// startStasis installs the CRDs and RBAC and starts an agent on each node
// and the controller on the host, each with its own ServiceAccount's
// token: what RBAC lets them do is what the tests exercise.
func startStasis(ctx context.Context, signingKey string) (func(), error) {
	scheme := runtime.NewScheme()
	clientgoscheme.AddToScheme(scheme)
	stasisv1.AddToScheme(scheme)
	var err error
	if kc, err = client.New(cluster.Config, client.Options{Scheme: scheme}); err != nil {
		return nil, err
	}
	if err := cluster.InstallCRDs("../../config/crd/bases"); err != nil {
		return nil, err
	}
	if _, err := cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "stasis-system"}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	if err := cluster.Apply(ctx, "../../config/rbac/checkpoint_roles.yaml", "../../config/rbac/role.yaml",
		"../../config/rbac/service_accounts.yaml", "../../config/admission/migration_hold.yaml"); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "stasis-migrate-stack-")
	if err != nil {
		return nil, err
	}
	stackDir = dir
	var controller *exec.Cmd
	stop := func() {
		if controller != nil {
			controller.Process.Signal(syscall.SIGTERM)
			controller.Wait()
		}
		for name := range agents {
			stopAgent(name)
		}
		os.RemoveAll(dir)
	}
	for _, n := range cluster.Nodes {
		// The nodes reach the API server at the host's address on their
		// network, not at the host's loopback.
		server := "https://" + net.JoinHostPort(cluster.HostIP, strconv.Itoa(cluster.APIPort()))
		kubeconfig, err := serviceAccountKubeconfig(ctx, dir, "stasis-agent-"+n.Name, "stasis-agent", server)
		if err != nil {
			stop()
			return nil, err
		}
		if err := startAgent(n, dir, kubeconfig, signingKey); err != nil {
			stop()
			return nil, err
		}
	}
	kubeconfig, err := serviceAccountKubeconfig(ctx, dir, "stasis-controller", "stasis-controller", cluster.Config.Host)
	if err != nil {
		stop()
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		stop()
		return nil, err
	}
	controllerMetrics = l.Addr().String()
	l.Close()
	controller = exec.Command(filepath.Join(bin, "stasis-controller"), "--kubeconfig", kubeconfig,
		"--agent-port", strconv.Itoa(agentPort), "--agent-ca", cluster.CA, "--health-probe-bind-address", "0",
		"--metrics-bind-address", controllerMetrics,
		// A restore whose agent is down fails after this, rather than
		// the 3 minutes of a cluster: TestMigrateRollsBackWhenTheTargetFails
		// waits that long.
		"--restore-retry-for", "30s")
	log, _ := os.Create(filepath.Join(dir, "controller.log"))
	controller.Stdout, controller.Stderr = log, log
	if err := controller.Start(); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// agentArgs are the agent's of node n: serving on the node's address with
// its kubelet's certificate, checkpointing its containerd's containers
// (their mounts are in the node's mount namespace, its own mountinfo),
// fetching from the other nodes' agents.
func agentArgs(n *kubenode.Member, kubeconfig, signingKey string) []string {
	cert, key := n.KubeletServing()
	runcRoot := criRuncRoot(n)
	return []string{"--root", n.StasisRoot, "--runroot", n.StasisRunRoot, "agent",
		"--listen", net.JoinHostPort(n.IP, strconv.Itoa(agentPort)), "--tls-cert", cert, "--tls-key", key,
		"--kubeconfig", kubeconfig, "--cri-runc-root", runcRoot,
		"--mountinfo", "/proc/self/mountinfo", "--node-name", n.Name, "--signing-key", signingKey,
		"--peer-ca", cluster.CA}
}

// criRuncRoot is where runc keeps the state of node n's pod containers.
func criRuncRoot(n *kubenode.Member) string {
	if n.Runtime == kubenode.RuntimeContainerd {
		return filepath.Join(n.RuncRoot(), "k8s.io")
	}
	return n.RuncRoot()
}

var agentSetup = map[string][]string{}

func startAgent(n *kubenode.Member, dir, kubeconfig, signingKey string) error {
	args := agentArgs(n, kubeconfig, signingKey)
	agentSetup[n.Name] = append([]string{dir}, args...)
	return launchAgent(n, dir, args)
}

func launchAgent(n *kubenode.Member, dir string, args []string) error {
	cmd := n.Command(filepath.Join(bin, "stasis"), args...)
	log, err := os.OpenFile(filepath.Join(dir, "agent-"+n.Name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return err
	}
	agents[n.Name] = cmd
	return waitListening(net.JoinHostPort(n.IP, strconv.Itoa(agentPort)))
}

// stopAgent stops the agent of a node; restartAgent starts it again.
func stopAgent(name string) {
	if a := agents[name]; a != nil {
		a.Process.Signal(syscall.SIGTERM)
		a.Wait()
		delete(agents, name)
	}
}

func restartAgent(name string) error {
	s := agentSetup[name]
	return launchAgent(cluster.Node(name), s[0], s[1:])
}

// serviceAccountKubeconfig writes a kubeconfig with a token of the
// ServiceAccount stasis-system/sa (created by config/rbac), file named
// after name.
func serviceAccountKubeconfig(ctx context.Context, dir, name, sa, server string) (string, error) {
	exp := int64(7200)
	tr, err := cluster.Client.CoreV1().ServiceAccounts("stasis-system").CreateToken(ctx, sa, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token of %s: %w", sa, err)
	}
	token := filepath.Join(dir, name+".token")
	if err := os.WriteFile(token, []byte(tr.Status.Token), 0o600); err != nil {
		return "", err
	}
	kubeconfig := filepath.Join(dir, name+".kubeconfig")
	return kubeconfig, os.WriteFile(kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: u, user: {tokenFile: %q}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, server, cluster.CA, token)), 0o600)
}

// logTails are the last lines of the agents' and the controller's logs,
// for a failure's message.
func logTails() string {
	var b strings.Builder
	for _, f := range []string{"controller.log", "agent-node-a.log", "agent-node-b.log"} {
		out, _ := exec.Command("tail", "-n", "15", filepath.Join(stackDir, f)).CombinedOutput()
		fmt.Fprintf(&b, "--- %s\n%s", f, out)
	}
	for _, n := range cluster.Nodes {
		fmt.Fprintf(&b, "--- kubelet %s\n%s", n.Name, n.LogTail("kubelet", 10))
	}
	var rs stasisv1.RestoreList
	kc.List(context.Background(), &rs)
	for _, r := range rs.Items {
		fmt.Fprintf(&b, "--- restore %s/%s: %+v\n", r.Namespace, r.Name, r.Status)
	}
	pods, _ := cluster.Client.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{})
	for _, p := range pods.Items {
		fmt.Fprintf(&b, "--- pod %s/%s on %s: %s %+v\n", p.Namespace, p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.ContainerStatuses)
	}
	return b.String()
}

// waitListening waits until something accepts connections at addr.
func waitListening(addr string) error {
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var c net.Conn
		if c, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("nothing listens at %s: %w", addr, err)
}
