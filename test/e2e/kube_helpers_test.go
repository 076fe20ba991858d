package e2e

import (
	"context"
	"os"
	"testing"

	"github.com/stasis-dev/stasis/test/kubenode"
)

// startAPIServer starts a real etcd and kube-apiserver (built by
// hack/k8s/build.sh), with RBAC, for the agent to ask; the cluster CA and a
// system:masters kubeconfig come with it.
func startAPIServer(t *testing.T) *kubenode.Node {
	t.Helper()
	requireRoot(t)
	bin := os.Getenv("STASIS_K8S_BIN")
	if bin == "" {
		bin = "/var/cache/stasis/k8s/bin"
	}
	n, err := kubenode.Start(context.Background(), kubenode.Options{K8sBin: bin, ControlPlaneOnly: true})
	if err != nil {
		t.Fatalf("start etcd and kube-apiserver (hack/k8s/build.sh builds them): %v", err)
	}
	t.Cleanup(n.Stop)
	return n
}
