package kube

import (
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// config/default renders (as `kubectl apply -k` would) and the API server
// accepts every object in it (a server-side dry run: the cluster the tests
// run has its own stasis stack).
func TestDefaultManifestsAreAccepted(t *testing.T) {
	requireNode(t)
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), "../../config/default")
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, r := range res.Resources() {
		m, err := r.Map()
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{Object: m}
		kinds[u.GetKind()]++
		if err := kc.Create(ctx, u, client.DryRunAll); err != nil && !isAlreadyExists(err) {
			t.Errorf("%s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	for _, k := range []string{"CustomResourceDefinition", "Deployment", "DaemonSet", "RuntimeClass", "ClusterRole",
		"ValidatingAdmissionPolicy", "ServiceAccount", "Namespace"} {
		if kinds[k] == 0 {
			t.Errorf("config/default has no %s", k)
		}
	}
}
