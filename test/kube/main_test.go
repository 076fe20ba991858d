// Package kube tests stasis on a real single-node Kubernetes (containerd
// 2.4, which has no restore of its own) started once for the package by
// test/kubenode.
package kube

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stasis-dev/stasis/test/kubenode"
)

var (
	node      *kubenode.Node
	stasisBin string
	pluginBin string
	// stasisRoot is the node's stasis store, shared by the CLI the tests
	// run and the stasis-runc the RuntimeClass runs.
	stasisRoot, stasisRunRoot string
	// clusterKey signs what the agent checkpoints (the nodes verify with
	// clusterKey.pub); trustedKey is an administrator's own key, whose
	// signatures the nodes accept on checkpoints made elsewhere.
	clusterKey, trustedKey string
)

// notRoot, when set, is why every test skips: they run a whole node.
var notRoot string

// requireNode skips t when no node could be started (not root), saying so.
func requireNode(t *testing.T) {
	t.Helper()
	if notRoot != "" {
		t.Skip(notRoot)
	}
}

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		notRoot = "Kubernetes e2e tests need root (a kubelet, containerd, runc and CRIU)"
		os.Exit(m.Run())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	bin, err := os.MkdirTemp("", "stasis-kube-bin-")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer os.RemoveAll(bin)
	for _, c := range []string{"stasis", "stasis-runc", "stasis-controller", "kubectl-stasis"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, c), "../../cmd/"+c)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Printf("build %s: %v\n%s", c, err, out)
			return 1
		}
	}
	stasisBin = filepath.Join(bin, "stasis")
	pluginBin = filepath.Join(bin, "kubectl-stasis")
	clusterKey, trustedKey = filepath.Join(bin, "cluster"), filepath.Join(bin, "trusted")
	for _, k := range []string{clusterKey, trustedKey} {
		if out, err := exec.Command(stasisBin, "key", "generate", k).CombinedOutput(); err != nil {
			fmt.Printf("stasis key generate: %v\n%s", err, out)
			return 1
		}
	}
	stasisRoot, _ = os.MkdirTemp("/var/tmp", "stasis-kube-store-")
	stasisRunRoot, _ = os.MkdirTemp("/run", "stasis-kube-store-")
	defer os.RemoveAll(stasisRoot)
	defer os.RemoveAll(stasisRunRoot)
	node, err = kubenode.Start(context.Background(), kubenode.Options{
		ContainerdBin: envOr("STASIS_CONTAINERD_BIN", "/var/cache/stasis/containerd/bin"),
		StasisRunc:    filepath.Join(bin, "stasis-runc"),
		StasisRoot:    stasisRoot, StasisRunRoot: stasisRunRoot,
		StasisClusterKey: clusterKey + ".pub", StasisTrustedKeys: []string{trustedKey + ".pub"},
		Log: os.Stdout,
	})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer node.Stop()
	stop, err := startStasis(bin)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer stop()
	return m.Run()
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
