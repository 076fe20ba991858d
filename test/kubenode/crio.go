package kubenode

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// CRIO is a CRI-O (built by hack/crio/build.sh) with its own image store,
// driven with crictl, whose runtime handler "stasis" runs stasis-runc: the
// same restore as on containerd, under another CRI runtime.
type CRIO struct {
	Dir, Run string
	bin      string
	cmd      *exec.Cmd
	log      *os.File
}

// crioBridge and crioCgroup name what Stop removes.
const (
	crioBridge = "stasiscrio0"
	crioCgroup = "stasis-crio"
)

// StartCRIO starts CRI-O; images come from a tar of a rootfs each
// (ImportRootfs), put in its store by Podman.
func StartCRIO(ctx context.Context, o Options, crioBin string) (_ *CRIO, err error) {
	c := &CRIO{bin: crioBin}
	if c.Dir, err = os.MkdirTemp("/var/tmp", "stasis-crio-"); err != nil {
		return nil, err
	}
	if c.Run, err = os.MkdirTemp("/run", "stasis-crio-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	for _, d := range []string{"cni", "state", "logs", "conf.d"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(c.Dir, "crictl.yaml"), []byte("timeout: 60\n"), 0o600); err != nil {
		return nil, err
	}
	cni := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "stasis-crio", "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.244.78.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}`,
		crioBridge, filepath.Join(c.Run, "cni-ipam"))
	if err := os.WriteFile(filepath.Join(c.Dir, "cni", "10-stasis.conflist"), []byte(cni), 0o600); err != nil {
		return nil, err
	}
	runtimeCfg := filepath.Join(c.Dir, "stasis-runtime.json")
	if err := writeRuntimeConfig(runtimeCfg, o); err != nil {
		return nil, err
	}
	cfgFile := filepath.Join(c.Dir, "crio.conf")
	if err := writeCRIOConfig(cfgFile, crioPaths{root: filepath.Join(c.Dir, "storage"), logDir: filepath.Join(c.Dir, "pod-logs"), state: filepath.Join(c.Dir, "state"), run: c.Run, socket: c.Socket(),
		pinns: filepath.Join(filepath.Dir(crioBin), "pinns"), runcRoot: c.RuncRoot(), cni: filepath.Join(c.Dir, "cni"),
		stasisRunc: o.StasisRunc, runtimeConfig: runtimeCfg}); err != nil {
		return nil, err
	}
	if c.log, err = os.Create(filepath.Join(c.Dir, "logs", "crio.log")); err != nil {
		return nil, err
	}
	c.cmd = exec.Command(crioBin, "--config", cfgFile, "--config-dir", filepath.Join(c.Dir, "conf.d"))
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	c.cmd.Env = append(os.Environ(), crioSearchPath)
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		if _, err := c.Crictl("version"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("crio did not come up:\n%s", c.LogTail(20))
		}
	}
	pause, err := buildPause(c.Dir)
	if err != nil {
		return nil, err
	}
	pauseFS, err := rootfsTar(nil, map[string][]byte{"pause": pause}, nil, "")
	if err != nil {
		return nil, err
	}
	bb, err := BusyboxRootfs()
	if err != nil {
		return nil, err
	}
	for ref, fs := range map[string][]byte{PauseImage: pauseFS, BusyboxImage: bb} {
		tarPath := filepath.Join(c.Dir, "rootfs.tar")
		if err := os.WriteFile(tarPath, fs, 0o600); err != nil {
			return nil, err
		}
		if out, err := c.podman("import", tarPath, ref).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("podman import %s: %v: %s", ref, err, out)
		}
	}
	return c, nil
}

// crioSearchPath is CRI-O's PATH, and its conmons'.
const crioSearchPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// crioPaths are where a CRI-O keeps its things: none in the default
// places, which a CRI-O of the host may use.
type crioPaths struct {
	root   string // the image and container store
	run    string // runtime state: the store's, namespaces, exit files, attach sockets
	logDir string
	state  string // what must survive a reboot (the version file)
	socket string
	pinns  string
	// runcRoot is runc's --root for both handlers.
	runcRoot string
	cni      string // the CNI configuration directory
	// stasisRunc and runtimeConfig are the "stasis" handler's binary and
	// its configuration file.
	stasisRunc, runtimeConfig string
}

// writeCRIOConfig writes a CRI-O configuration with the runtime handlers
// "runc" and "stasis" (stasis-runc, under conmon as runc is).
func writeCRIOConfig(path string, p crioPaths) error {
	conf := fmt.Sprintf(`[crio]
root = %[1]q
runroot = %[2]q
storage_driver = "overlay"
log_dir = %[3]q
version_file = %[4]q
version_file_persist = %[5]q
clean_shutdown_file = %[6]q
[crio.api]
listen = %[7]q
[crio.runtime]
cgroup_manager = "cgroupfs"
conmon = "/usr/bin/conmon"
conmon_cgroup = "pod"
default_runtime = "runc"
drop_infra_ctr = true
enable_criu_support = true
pinns_path = %[8]q
namespaces_dir = %[9]q
container_exits_dir = %[10]q
container_attach_socket_dir = %[11]q
apparmor_profile = ""
seccomp_profile = ""
hooks_dir = []
[crio.runtime.runtimes.runc]
runtime_path = "/usr/sbin/runc"
runtime_type = "oci"
runtime_root = %[12]q
monitor_path = "/usr/bin/conmon"
monitor_cgroup = "pod"
monitor_env = [%[13]q]
[crio.runtime.runtimes.stasis]
runtime_path = %[14]q
runtime_type = "oci"
runtime_root = %[12]q
monitor_path = "/usr/bin/conmon"
monitor_cgroup = "pod"
monitor_env = [%[13]q, %[15]q]
[crio.image]
pause_image = %[16]q
pause_command = "/pause"
[crio.network]
network_dir = %[17]q
plugin_dirs = ["/usr/lib/cni"]
[crio.nri]
enable_nri = false
`, p.root, filepath.Join(p.run, "storage"), p.logDir,
		filepath.Join(p.run, "version"), filepath.Join(p.state, "version"), filepath.Join(p.state, "clean.shutdown"),
		p.socket, p.pinns, filepath.Join(p.run, "ns"), filepath.Join(p.run, "exits"),
		p.run, p.runcRoot, crioSearchPath, p.stasisRunc, "STASIS_RUNTIME_CONFIG="+p.runtimeConfig, PauseImage, p.cni)
	return os.WriteFile(path, []byte(conf), 0o600)
}

// startCRIO starts a cluster member's CRI-O, for its kubelet.
func (w *worker) startCRIO(ctx context.Context) error {
	cni, err := w.writeCNI("stasis-kube")
	if err != nil {
		return err
	}
	for _, d := range []string{w.path("state"), w.path("crio.conf.d")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	runtimeCfg := w.path("stasis-runtime.json")
	if err := writeRuntimeConfig(runtimeCfg, w.opts); err != nil {
		return err
	}
	cfg := w.path("crio.conf")
	if err := writeCRIOConfig(cfg, crioPaths{root: w.path("storage"), run: w.run, logDir: w.path("crio-logs"),
		state: w.path("state"), socket: w.socket(), pinns: filepath.Join(w.crioBin, "pinns"), runcRoot: w.runcRoot(),
		cni: cni, stasisRunc: w.opts.StasisRunc, runtimeConfig: runtimeCfg}); err != nil {
		return err
	}
	if err := os.WriteFile(w.path("crictl.yaml"), []byte("timeout: 60\n"), 0o600); err != nil {
		return err
	}
	if err := w.procs.start(RuntimeCRIO, []string{crioSearchPath},
		w.command(filepath.Join(w.crioBin, "crio"), "--config", cfg, "--config-dir", w.path("crio.conf.d"))); err != nil {
		return err
	}
	return poll(ctx, 60*time.Second, "crio", func() (bool, error) {
		out, err := w.crictl("version")
		return err == nil, fmt.Errorf("%v: %s", err, out)
	})
}

// crictl runs crictl against a member's CRI-O.
func (w *worker) crictl(args ...string) (string, error) {
	return crictl(w.crioBin, w.path("crictl.yaml"), w.socket(), args...)
}

// podman works on a member's CRI-O's image store, in the node's mount
// namespace, where the mounts it makes stay.
func (w *worker) podman(args ...string) *exec.Cmd {
	return w.command("podman", podmanArgs(w.path("storage"), w.run, args)...)
}

// Socket is CRI-O's CRI endpoint.
func (c *CRIO) Socket() string { return filepath.Join(c.Run, "crio.sock") }

// RuncRoot is runc's --root for CRI-O's containers.
func (c *CRIO) RuncRoot() string { return filepath.Join(c.Run, "runc") }

// podman works on CRI-O's image store.
func (c *CRIO) podman(args ...string) *exec.Cmd {
	return exec.Command("podman", podmanArgs(filepath.Join(c.Dir, "storage"), c.Run, args)...)
}

// podmanArgs make podman work on the image store of a CRI-O whose runtime
// state is in run.
func podmanArgs(root, run string, args []string) []string {
	return append([]string{"--root", root, "--runroot", filepath.Join(run, "storage"),
		"--storage-driver", "overlay", "--tmpdir", filepath.Join(run, "libpod"), "--cgroup-manager", "cgroupfs",
		"--events-backend", "file", "--runtime", "/usr/sbin/runc"}, args...)
}

// Crictl runs crictl against this CRI-O.
func (c *CRIO) Crictl(args ...string) (string, error) {
	return crictl(filepath.Dir(c.bin), filepath.Join(c.Dir, "crictl.yaml"), c.Socket(), args...)
}

// crictl runs the crictl in binDir, with the config file config, against
// the CRI endpoint socket. It runs on the host: a socket under a node's
// run directory is a file every mount namespace sees.
func crictl(binDir, config, socket string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(binDir, "crictl"), append([]string{"--config", config,
		"--runtime-endpoint", "unix://" + socket,
		"--image-endpoint", "unix://" + socket, "--timeout", "60s"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return strings.TrimSpace(string(out)), fmt.Errorf("crictl %s: %w: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	if args[0] == "logs" { // the container's stderr comes on crictl's
		out = append(out, stderr.String()...)
	}
	return strings.TrimSpace(string(out)), nil
}

// WriteJSON writes a crictl config file (pod or container) in Dir.
func (c *CRIO) WriteJSON(name string, v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	p := filepath.Join(c.Dir, name)
	return p, os.WriteFile(p, b, 0o600)
}

// CgroupParent is the cgroup the tests' pods go under, which Stop empties.
const CgroupParent = "/" + crioCgroup

// LogTail is the end of CRI-O's log.
func (c *CRIO) LogTail(lines int) string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "logs", "crio.log"))
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// Stop removes the pods, stops CRI-O and removes what it made.
func (c *CRIO) Stop() {
	if c.cmd != nil && c.cmd.Process != nil {
		// Killed first: a shell as PID 1 ignores the SIGTERM of a stop,
		// which would then wait out its grace period.
		killCgroup(crioCgroup)
		c.Crictl("rmp", "-fa")
		terminate(c.cmd)
	}
	if c.log != nil {
		c.log.Close()
	}
	killCgroup(crioCgroup)
	unmountUnder(c.Dir, c.Run)
	exec.Command("ip", "link", "del", crioBridge).Run()
	removeCgroups(crioCgroup)
	if c.Run != "" {
		os.RemoveAll(c.Run)
	}
	if c.Dir != "" && os.Getenv("STASIS_KEEP_KUBENODE") == "" {
		os.RemoveAll(c.Dir)
	}
}
