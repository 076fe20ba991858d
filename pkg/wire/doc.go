// Package wire is what goes between stasis' processes: the agent's
// requests and answers (checkpoint, restore, a pod's checkpoint, a grant
// resolved for stasis-runc), the audience of its tokens, and the client
// that calls it over HTTPS or the node socket. It imports nothing of the
// node (no engine, CRIU, runc or image store), so the controller, the
// kubectl plugin and the CLI link it without linking those.
package wire
