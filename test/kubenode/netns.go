package kubenode

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// namespaces are a cluster member's network and mount namespaces, held
// open by one process, the holder, which the member's programs enter with
// nsenter.
//
// Not `ip netns add` and `ip netns exec`: exec remounts /sys for the
// network namespace, which hides the cgroup v1 hierarchies under
// /sys/fs/cgroup that the kubelet and runc need, and it makes a new mount
// namespace for every command, so the kubelet would not see containerd's
// mounts. A holder also leaves nothing in /run/netns: its namespaces go
// when the last process in them exits.
type namespaces struct {
	holder *exec.Cmd
	// net and mnt name the namespaces (as /proc/<pid>/ns/* link to them),
	// to find what is left in them once the holder has gone.
	net, mnt string
}

// newNamespaces starts a holder in new network and mount namespaces.
// The mount namespace is a slave of the host's: the host's mounts reach
// the node, the node's (rootfs, volumes, pod network namespaces, the bind
// mounts of bind) never reach the host, and all go with the namespace.
func newNamespaces(ctx context.Context, logPath string) (*namespaces, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the holder has its own copy
	cmd := exec.Command("unshare", "--net", "--mount", "--propagation", "slave", "--", "sleep", "infinity")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start namespace holder: %w", err)
	}
	ns := &namespaces{holder: cmd}
	// Ready once unshare has made the namespaces and execed sleep: before
	// that, nsenter would enter the host's.
	err = poll(ctx, 10*time.Second, "namespace holder", func() (bool, error) {
		exe, err := os.Readlink(procPath(cmd.Process.Pid, "exe"))
		if err != nil || filepath.Base(exe) != "sleep" {
			return false, fmt.Errorf("holder runs %q: %v", exe, err)
		}
		ns.net, err = os.Readlink(procPath(cmd.Process.Pid, "ns/net"))
		if err != nil {
			return false, err
		}
		ns.mnt, err = os.Readlink(procPath(cmd.Process.Pid, "ns/mnt"))
		return err == nil, err
	})
	if err != nil {
		ns.stop()
		return nil, err
	}
	return ns, nil
}

func procPath(pid int, name string) string {
	return filepath.Join("/proc", strconv.Itoa(pid), name)
}

// pid is the holder's process, whose namespaces nsenter -t enters.
func (ns *namespaces) pid() int { return ns.holder.Process.Pid }

// command runs a program in the namespaces. nsenter execs it, so the
// process is the program's own (a signal to it reaches the program).
// --wd=. keeps the caller's working directory (cmd.Dir), which nsenter
// opens before it enters the mount namespace, whose root it would
// otherwise start in.
func (ns *namespaces) command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--target", strconv.Itoa(ns.pid()), "--net", "--mount", "--wd=.", "--", name}, args...)...)
}

// bind bind-mounts src on dst in the mount namespace.
func (ns *namespaces) bind(src, dst string) error {
	// The mount point must exist; the paths bound over are the standard
	// ones a kubelet or containerd uses, which an empty directory on the
	// host does not disturb.
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	return run(ns.command("mount", "--bind", src, dst))
}

// stop kills what is left in the namespaces, then the holder, with which
// they go.
func (ns *namespaces) stop() {
	if ns.net != "" {
		for attempt := 0; attempt < 20; attempt++ {
			pids := ns.members()
			if len(pids) == 0 {
				break
			}
			for _, pid := range pids {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	ns.holder.Process.Kill()
	ns.holder.Wait()
}

// members are the processes in the namespaces, the holder's aside: the
// runtime's shims or conmons, a program a test started with
// Member.Command.
func (ns *namespaces) members() []int {
	var pids []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == ns.pid() {
			continue
		}
		n, _ := os.Readlink(filepath.Join(d, "ns/net"))
		m, _ := os.Readlink(filepath.Join(d, "ns/mnt"))
		if n == ns.net || m == ns.mnt {
			pids = append(pids, pid)
		}
	}
	return pids
}

// run runs a command, its output in the error.
func run(cmd *exec.Cmd) error {
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ip runs ip(8) in the host's network namespace.
func ip(args ...string) error { return run(exec.Command("ip", args...)) }

// clusterBridge is the host's side of a cluster's network: a bridge with
// the host's address on the nodes' subnet, which the API server is
// reached at.
type clusterBridge struct {
	name   string
	index  int    // the cluster's among those on this host
	hostIP string // on the bridge
}

// maxClusters bounds the clusters on one host: each has a bridge
// stasisclN and the subnets 10.98.N.0/24 (nodes) and 10.(100+N).0.0/16
// (pods), which must not meet another's.
const maxClusters = 32

// newClusterBridge creates the bridge of the first free index. Creating
// the bridge is the claim: it fails if another cluster (in another test
// binary) holds the index, or a crashed run left it.
func newClusterBridge() (*clusterBridge, error) {
	for i := 0; i < maxClusters; i++ {
		b := &clusterBridge{name: fmt.Sprintf("stasiscl%d", i), index: i, hostIP: fmt.Sprintf("10.98.%d.1", i)}
		out, err := exec.Command("ip", "link", "add", b.name, "type", "bridge").CombinedOutput()
		if err != nil {
			if strings.Contains(string(out), "File exists") {
				continue
			}
			return nil, fmt.Errorf("ip link add %s: %w: %s", b.name, err, strings.TrimSpace(string(out)))
		}
		if err := ip("addr", "add", b.hostIP+"/24", "dev", b.name); err != nil {
			b.remove()
			return nil, err
		}
		if err := ip("link", "set", b.name, "up"); err != nil {
			b.remove()
			return nil, err
		}
		return b, nil
	}
	return nil, fmt.Errorf("no free cluster network: bridges stasiscl0 to stasiscl%d exist", maxClusters-1)
}

// nodeIP and podCIDR are the addresses of the cluster's i-th node.
func (b *clusterBridge) nodeIP(i int) string { return fmt.Sprintf("10.98.%d.%d", b.index, i+2) }
func (b *clusterBridge) podCIDR(i int) string {
	return fmt.Sprintf("10.%d.%d.0/24", 100+b.index, i+1)
}

// veth is the host's end of the i-th node's link.
func (b *clusterBridge) veth(i int) string { return fmt.Sprintf("%sv%d", b.name, i) }

// remove deletes the bridge, and with it the host's routes through it.
func (b *clusterBridge) remove() {
	exec.Command("ip", "link", "del", b.name).Run()
}

// link connects a node's network namespace to the bridge: a veth whose
// other end is the node's eth0 with nodeIP, its default route through
// the host (the API server) and a route to its pods on the host.
func (b *clusterBridge) link(ns *namespaces, veth, nodeIP, podCIDR string) error {
	if err := ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", strconv.Itoa(ns.pid())); err != nil {
		return err
	}
	if err := ip("link", "set", veth, "master", b.name, "up"); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"addr", "add", nodeIP + "/24", "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"link", "set", "lo", "up"},
		{"route", "add", "default", "via", b.hostIP},
	} {
		if err := run(ns.command("ip", args...)); err != nil {
			return err
		}
	}
	// The node forwards between eth0 and its pods' bridge; CNI's bridge
	// plugin would set it too, with the first pod.
	if err := run(ns.command("sysctl", "-qw", "net.ipv4.ip_forward=1")); err != nil {
		return err
	}
	return ip("route", "add", podCIDR, "via", nodeIP)
}

// routePods routes a node's traffic for another node's pods straight to
// that node over the bridge, as a host-gw pod network does.
func routePods(ns *namespaces, podCIDR, via string) error {
	return run(ns.command("ip", "route", "add", podCIDR, "via", via))
}
