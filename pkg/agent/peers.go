package agent

import (
	"context"
	"errors"
	"fmt"
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

// Peers fetches checkpoint images from the stores of other nodes' agents
// into this node's, through their /v2/ API: the transfer of a Restore onto
// another node and of a migration, agent to agent (TLS, the other agent's
// certificate its node's own, a token of this agent's ServiceAccount for
// that agent alone), with no registry and no shared disk between them.
type Peers struct {
	Nodes  wire.Nodes
	Kube   kubernetes.Interface
	Engine *engine.Engine
	// Fetched, when set, counts the bytes of each image fetched.
	Fetched func(bytes int64)

	flight singleflight.Group
}

// Fetch copies image name (a checkpoint image and its signature image)
// from node's store into this node's under the same name, unless it is
// there already. Replicas restored at once from one checkpoint share one
// fetch.
func (p *Peers) Fetch(ctx context.Context, node, name string) error {
	if _, err := p.Engine.Images.Get(name); err == nil {
		return nil
	} else if !errors.Is(err, image.ErrNotFound) {
		return err
	}
	_, err, _ := p.flight.Do(node+"\x00"+name, func() (any, error) {
		// Shared, the fetch outlives the caller that started it, within
		// a bound of its own.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		return nil, p.fetch(ctx, node, name)
	})
	return err
}

// fetchTimeout bounds one fetch from another node.
const fetchTimeout = 15 * time.Minute

func (p *Peers) fetch(ctx context.Context, nodeName, name string) error {
	node, err := p.Kube.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("fetch %s from node %s: %w", name, nodeName, err)
	}
	c, err := p.Nodes.Client(ctx, node)
	if err != nil {
		return fmt.Errorf("fetch %s from node %s: %w", name, nodeName, err)
	}
	ref := strings.TrimPrefix(c.Base(), "https://") + "/" + image.NormalizeName(name)
	img, err := p.Engine.PullAs(ctx, ref, name, registry.Options{TLSVerify: true, Transport: c.Transport()})
	if err != nil {
		return fmt.Errorf("fetch %s from the agent of node %s: %w", name, nodeName, err)
	}
	if p.Fetched != nil {
		p.Fetched(img.Size)
	}
	return nil
}
