package kube

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
)

// The stasis deployment the tests run against, as config/ describes it
// but with host processes: the agent on the node's address, the
// controller with its ServiceAccount's token and RBAC.
var (
	kc             client.Client // system:masters, with the stasis.dev types
	agentPort      int
	controllerSA   = "system:serviceaccount:stasis-system:stasis-controller"
	controller     *exec.Cmd
	controllerArgs []string
	controllerBin  string
	stackDir       string
)

func startStasis(bin string) (func(), error) {
	ctx := context.Background()
	ctrllog.SetLogger(logr.Discard())
	scheme := runtime.NewScheme()
	clientgoscheme.AddToScheme(scheme)
	stasisv1.AddToScheme(scheme)
	var err error
	if kc, err = client.New(node.Config, client.Options{Scheme: scheme}); err != nil {
		return nil, err
	}
	if err := node.InstallCRDs("../../config/crd/bases"); err != nil {
		return nil, err
	}
	// role.yaml's Role lives there.
	if _, err := node.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "stasis-system"}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	if err := node.Apply(ctx, "../../config/rbac/checkpoint_roles.yaml", "../../config/rbac/role.yaml",
		"../../config/admission/restore_policy.yaml"); err != nil {
		return nil, err
	}
	stackDir, err = os.MkdirTemp("", "stasis-kube-stack-")
	if err != nil {
		return nil, err
	}
	var procs []*exec.Cmd
	stop := func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].Process.Signal(syscall.SIGTERM)
			procs[i].Wait()
		}
		if controller != nil && controller.ProcessState == nil {
			controller.Process.Signal(syscall.SIGTERM)
			controller.Wait()
		}
		os.RemoveAll(stackDir)
	}

	// The agent: serving on the node's InternalIP with the kubelet's
	// serving certificate, reviewing tokens as the admin, checkpointing
	// containerd's runc containers and signing them with the cluster key.
	cert, key := node.KubeletServing()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	agentPort = l.Addr().(*net.TCPAddr).Port
	l.Close()
	agent := exec.Command(stasisBin, "--root", stasisRoot, "--runroot", stasisRunRoot, "agent",
		"--listen", net.JoinHostPort(node.IP, strconv.Itoa(agentPort)), "--tls-cert", cert, "--tls-key", key,
		"--kubeconfig", node.Kubeconfig, "--cri-runc-root", filepath.Join(node.RuncRoot(), "k8s.io"),
		"--node-name", node.Name, "--signing-key", clusterKey+".key")
	agentLog, _ := os.Create(filepath.Join(stackDir, "agent.log"))
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		stop()
		return nil, err
	}
	procs = append(procs, agent)

	// The controller: its own ServiceAccount, bound to its generated
	// roles (it mints its tokens for the agents itself).
	token, err := serviceAccountToken(ctx, "stasis-system", "stasis-controller", "stasis-controller")
	if err != nil {
		stop()
		return nil, err
	}
	if err := node.Apply(ctx, "../../config/rbac/service_accounts.yaml"); err != nil {
		stop()
		return nil, err
	}
	tokenFile := filepath.Join(stackDir, "controller.token")
	os.WriteFile(tokenFile, []byte(token), 0o600)
	kubeconfig := filepath.Join(stackDir, "controller.kubeconfig")
	os.WriteFile(kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: u, user: {tokenFile: %q}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, node.Config.Host, node.CA, tokenFile)), 0o600)
	controllerArgs = []string{"--kubeconfig", kubeconfig, "--agent-port", strconv.Itoa(agentPort),
		"--agent-ca", node.CA, "--health-probe-bind-address", "0"}
	if err := startController(bin); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

func startController(bin string) error {
	controllerBin = bin
	controller = exec.Command(filepath.Join(bin, "stasis-controller"), controllerArgs...)
	logf, _ := os.OpenFile(filepath.Join(stackDir, "controller.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	controller.Stdout, controller.Stderr = logf, logf
	return controller.Start()
}

// serviceAccountToken makes a ServiceAccount bound to a ClusterRole and
// returns a token of it.
func serviceAccountToken(ctx context.Context, ns, name, clusterRole string) (string, error) {
	cs := node.Client
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", err
	}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", err
	}
	if clusterRole != "" {
		_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: ns + "-" + name},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: clusterRole},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: name}},
		}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return "", err
		}
	}
	exp := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return tr.Status.Token, nil
}

// audienceToken is a token of a ServiceAccount for one audience.
func audienceToken(ctx context.Context, ns, name, audience string) (string, error) {
	exp := int64(3600)
	tr, err := node.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp, Audiences: []string{audience}}}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return tr.Status.Token, nil
}

// done waits for a Checkpoint or a Restore to reach a final phase.
func done[T interface {
	client.Object
	Done() bool
}](obj T) (T, error) {
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err := kc.Get(ctx, client.ObjectKeyFromObject(obj), obj); err == nil && obj.Done() {
			return obj, nil
		}
	}
	return obj, fmt.Errorf("%s/%s not done: %+v", obj.GetNamespace(), obj.GetName(), obj)
}

func waitCheckpoint(ns, name string) (*stasisv1.Checkpoint, error) {
	return done(&stasisv1.Checkpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})
}

func waitRestore(ns, name string) (*stasisv1.Restore, error) {
	return done(&stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})
}
