package wire

import "path/filepath"

// NodeSocket is where the agent of a node serves node-local callers
// under runRoot, and where stasis-runc asks.
func NodeSocket(runRoot string) string { return filepath.Join(runRoot, "agent.sock") }

// Audience is the audience of the tokens the agent of node accepts: one
// node's, so that a token sent to one agent (whose node may be
// compromised) opens no other, nor the API server.
func Audience(node string) string { return "stasis-agent:" + node }

// GrantRequest is what the RuntimeClass's runtime (stasis-runc) asks the
// node's agent, over the node socket, for each container it creates: the
// pod and container the CRI runtime is creating, and the grant the pod's
// annotation AnnotationRestoreFrom names, if the runtime passed it on
// (the pod's own annotation is what counts).
type GrantRequest struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	PodUID    string `json:"podUID"`
	Container string `json:"container"`
	Grant     string `json:"grant"`
}

// GrantAnswer says what to restore, and what its signature must say.
type GrantAnswer struct {
	// Restore false: the pod names no grant, or one with no checkpoint
	// for this container, which is then created as usual.
	Restore bool `json:"restore"`
	// Image is the checkpoint image: a name in this node's store or a
	// registry reference.
	Image string `json:"image,omitempty"`
	// Namespace is the namespace the checkpoint must be signed for by the
	// cluster's key; Container and Archive (a sha256 digest, when the
	// Checkpoint recorded one) what the signature must bind too.
	Namespace string `json:"namespace,omitempty"`
	Container string `json:"container,omitempty"`
	Archive   string `json:"archive,omitempty"`
	LazyPages bool   `json:"lazyPages,omitempty"`
	// Peer, when set, says Image is in another node's store, read lazily
	// through its agent's /v2/ API: who that agent must be and the token
	// to send it (registry.Pinned's fields; wire links no registry code).
	Peer *PeerRegistry `json:"peer,omitempty"`
}

// PeerRegistry is another node's agent serving its store as a registry.
type PeerRegistry struct {
	CA           []byte `json:"ca"` // PEM
	Subject      string `json:"subject"`
	Organization string `json:"organization,omitempty"`
	Token        string `json:"token"`
}
