package agent

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"golang.org/x/sync/singleflight"

	"github.com/stasis-dev/stasis/pkg/engine"
	"github.com/stasis-dev/stasis/pkg/image"
	"github.com/stasis-dev/stasis/pkg/registry"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// Peers reads checkpoint images from the stores of other nodes' agents,
// through their /v2/ API: the transfer of a Restore onto another node and
// of a migration, agent to agent (TLS, the other agent's certificate its
// node's own, a token of this agent's ServiceAccount for that agent
// alone), with no registry and no shared disk between them.
type Peers struct {
	// Nodes says where the agents listen, the CA file their
	// certificates chain to and the tokens to send them.
	Nodes  wire.Nodes
	Kube   kubernetes.Interface
	Engine *engine.Engine

	flight singleflight.Group
}

// Fetch copies image name (a checkpoint image and its signature image)
// from node's store into this node's under the same name (Grants asks
// only for what this node's store lacks). Replicas restored at once from
// one checkpoint share one fetch.
func (p *Peers) Fetch(ctx context.Context, node, name string) error {
	_, err, _ := p.flight.Do(node+"\x00"+name, func() (any, error) {
		// Shared, the fetch outlives the caller that started it, within
		// a bound of its own.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		ref, pinned, err := p.Remote(ctx, node, name)
		if err != nil {
			return nil, err
		}
		if _, err := p.Engine.PullAs(ctx, ref, name, registry.Options{Pinned: pinned}); err != nil {
			return nil, fmt.Errorf("fetch %s from the agent of node %s: %w", name, node, err)
		}
		return nil, nil
	})
	return err
}

// fetchTimeout bounds one fetch from another node.
const fetchTimeout = 15 * time.Minute

// Remote is image name in node's store as a registry reference, and who
// that registry must be: what a lazy restore reads the pages from where
// they lie, on the other node.
func (p *Peers) Remote(ctx context.Context, nodeName, name string) (string, *registry.Pinned, error) {
	node, err := p.Kube.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return "", nil, fmt.Errorf("node %s: %w", nodeName, err)
	}
	base, err := p.Nodes.URL(node)
	if err != nil {
		return "", nil, err
	}
	ca, err := os.ReadFile(p.Nodes.CA)
	if err != nil {
		return "", nil, fmt.Errorf("the agents' CA: %w", err)
	}
	token, err := p.Nodes.Tokens.Token(ctx, nodeName)
	if err != nil {
		return "", nil, err
	}
	ref := strings.TrimPrefix(base, "https://") + "/" + image.NormalizeName(name)
	return ref, &registry.Pinned{CA: ca, Subject: "system:node:" + nodeName, Organization: "system:nodes", Token: token}, nil
}
