package kubenode

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Stop ends the node and removes what it made: processes (pods included),
// mounts, cgroups, the CNI bridge and the directories.
func (n *Node) Stop() {
	// A control plane alone made no pods, bridge or cgroups: those of
	// this name belong to a whole node that may be running beside it.
	node := n.w != nil && !n.opts.ControlPlaneOnly
	// The kubelet and containerd first, then the control plane.
	if node {
		n.w.stop()
	}
	n.ControlPlane.stop()
	if node {
		exec.Command("ip", "link", "del", bridge).Run()
		removeCgroups(cgroupRoot)
	}
	unmountUnder(n.Dir, n.Run)
	if n.Run != "" {
		os.RemoveAll(n.Run)
	}
	if n.Dir != "" && os.Getenv("STASIS_KEEP_KUBENODE") == "" {
		os.RemoveAll(n.Dir)
	}
}

// terminate stops a component with SIGTERM, or SIGKILL after 20 s.
func terminate(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// killCgroup kills every process under the cgroup root (in any hierarchy).
func killCgroup(root string) {
	for attempt := 0; attempt < 20; attempt++ {
		pids := cgroupPids(root)
		if len(pids) == 0 {
			return
		}
		thawCgroups(root)
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func cgroupDirs(root string) []string {
	var dirs []string
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + root)
	for _, r := range roots {
		filepath.Walk(r, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	return dirs
}

func cgroupPids(root string) []int {
	seen := map[int]bool{}
	var pids []int
	for _, d := range cgroupDirs(root) {
		b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func thawCgroups(root string) {
	for _, d := range cgroupDirs(root) {
		if strings.Contains(d, "/freezer/") {
			os.WriteFile(filepath.Join(d, "freezer.state"), []byte("THAWED"), 0)
		}
	}
}

func removeCgroups(root string) {
	dirs := cgroupDirs(root)
	// Deepest first: a cgroup with children cannot go.
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, d := range dirs {
		os.Remove(d)
	}
}

// unmountUnder detaches every mount under the directories, deepest first
// (overlay rootfs, shm, netns, the kubelet's volumes).
func unmountUnder(bases ...string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var targets []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		for _, base := range bases {
			if base != "" && strings.HasPrefix(mp, base+"/") {
				targets = append(targets, mp)
			}
		}
	}
	f.Close()
	sort.Slice(targets, func(i, j int) bool { return len(targets[i]) > len(targets[j]) })
	for _, t := range targets {
		syscall.Unmount(t, syscall.MNT_DETACH)
	}
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}
