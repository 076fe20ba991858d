package e2e

import (
	"context"
	"testing"

	"github.com/stasis-dev/stasis/test/kubenode"
)

// startAPIServer starts a real etcd and kube-apiserver (built by
// hack/k8s/build.sh), with RBAC, for the agent to ask; the cluster CA and a
// system:masters kubeconfig come with it.
func startAPIServer(t *testing.T) *kubenode.Node {
	t.Helper()
	requireRoot(t)
	n, err := kubenode.Start(context.Background(), kubenode.Options{ControlPlaneOnly: true})
	if err != nil {
		t.Fatalf("start etcd and kube-apiserver (hack/k8s/build.sh builds them): %v", err)
	}
	t.Cleanup(n.Stop)
	return n
}
