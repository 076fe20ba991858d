package kubenode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// InstallCRDs installs the CRDs in dir and waits until they are served.
func (cp *ControlPlane) InstallCRDs(dir string) error {
	_, err := envtest.InstallCRDs(cp.Config, envtest.CRDInstallOptions{Paths: []string{dir}, ErrorIfPathMissing: true})
	return err
}

// Apply creates the objects of multi-document YAML files, as
// `kubectl create -f` does; objects that exist already are left alone.
func (cp *ControlPlane) Apply(ctx context.Context, files ...string) error {
	c, err := client.New(cp.Config, client.Options{})
	if err != nil {
		return err
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
		for {
			var u unstructured.Unstructured
			if err := dec.Decode(&u.Object); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return fmt.Errorf("%s: %w", f, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			if err := c.Create(ctx, &u); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("%s: %s %s: %w", f, u.GetKind(), u.GetName(), err)
			}
		}
	}
	return nil
}

// IssueServing signs a serving certificate for this node's address with
// the cluster CA (which Node.CA names), for a server the tests start.
func (n *Node) IssueServing(name string) (cert, key string, err error) {
	return n.pki.issue(name, name, "", []net.IP{net.ParseIP(n.IP), net.ParseIP("127.0.0.1")}, []string{n.Name})
}

// KubeletServing is the kubelet's serving certificate and key: the
// cluster CA's, for system:node:<name>, as a kubelet with
// serverTLSBootstrap holds. A node's agent serves with it.
func (n *Node) KubeletServing() (cert, key string) { return n.w.kubeletServing() }
