package inspect

// Fuzz targets for inspect's readers of CRIU images, which come from
// checkpoints of other machines: each target writes a checkpoint dir
// whose images are the fuzzed bytes (the others hand-built and valid),
// and calls what `stasis inspect` calls. The invariant is that they end
// in an error at worst: no panic, no hang. The images are decoded by
// go-criu's crit; a panic there is go-criu's, and is not recovered here.

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	sk_inet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-inet"
	sk_opts "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/stats"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"github.com/checkpoint-restore/go-criu/v8/magic"
	"google.golang.org/protobuf/proto"

	"github.com/stasis-dev/stasis/pkg/archive"

	"github.com/stasis-dev/stasis/internal/treesnap"
)

var (
	u32 = proto.Uint32
	u64 = proto.Uint64
)

// image is a CRIU image file: magic, then each entry as a 32-bit
// little-endian size and the protobuf.
func image(t testing.TB, name string, entries ...proto.Message) []byte {
	m := magic.LoadMagic()
	var b []byte
	switch name {
	case "INVENTORY":
	case "STATS":
		b = binary.LittleEndian.AppendUint32(b, uint32(m.ByName["IMG_SERVICE"]))
	default:
		b = binary.LittleEndian.AppendUint32(b, uint32(m.ByName["IMG_COMMON"]))
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(m.ByName[name]))
	for _, e := range entries {
		p, err := proto.Marshal(e)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return b
}

func pstreeImg(t testing.TB, pids ...[2]uint32) []byte {
	var es []proto.Message
	for _, p := range pids {
		es = append(es, &pstree.PstreeEntry{Pid: u32(p[0]), Ppid: u32(p[1]), Pgid: u32(1), Sid: u32(1)})
	}
	return image(t, "PSTREE", es...)
}

func coreImg(t testing.TB, state uint32) []byte {
	return image(t, "CORE", &criu_core.CoreEntry{Mtype: criu_core.CoreEntry_X86_64.Enum(), Tc: &criu_core.TaskCoreEntry{
		TaskState: u32(state), ExitCode: u32(0), Personality: u32(0), Flags: u32(0), BlkSigset: u64(0), Comm: proto.String("server"),
	}})
}

func idsImg(t testing.TB) []byte {
	return image(t, "IDS", &criu_core.TaskKobjIdsEntry{VmId: u32(1), FilesId: u32(1), FsId: u32(1), SighandId: u32(1)})
}

func fdinfoImg(t testing.TB) []byte {
	return image(t, "FDINFO",
		&fdinfo.FdinfoEntry{Id: u32(10), Flags: u32(0), Type: fdinfo.FdTypes_REG.Enum(), Fd: u32(1)},
		&fdinfo.FdinfoEntry{Id: u32(11), Flags: u32(0), Type: fdinfo.FdTypes_INETSK.Enum(), Fd: u32(3)})
}

func filesImg(t testing.TB) []byte {
	own := &fown.FownEntry{Uid: u32(0), Euid: u32(0), Signum: u32(0), PidType: u32(0), Pid: u32(0)}
	reg := func(id uint32, name string) *fdinfo.FileEntry {
		return &fdinfo.FileEntry{Type: fdinfo.FdTypes_REG.Enum(), Id: u32(id), Reg: &regfile.RegFileEntry{Id: u32(id), Flags: u32(0), Pos: u64(0), Fown: own, Name: proto.String(name)}}
	}
	sk := &fdinfo.FileEntry{Type: fdinfo.FdTypes_INETSK.Enum(), Id: u32(11), Isk: &sk_inet.InetSkEntry{
		Id: u32(11), Ino: u32(99), Family: u32(2), Type: u32(1), Proto: u32(6), State: u32(10), SrcPort: u32(8080), DstPort: u32(0),
		Flags: u32(0), Backlog: u32(128), SrcAddr: []uint32{0}, DstAddr: []uint32{0}, Fown: own,
		Opts: &sk_opts.SkOptsEntry{SoSndbuf: u32(4096), SoRcvbuf: u32(4096), SoSndTmoSec: u64(0), SoSndTmoUsec: u64(0), SoRcvTmoSec: u64(0), SoRcvTmoUsec: u64(0)},
	}}
	return image(t, "FILES", reg(10, "/var/log/app.log"), sk, reg(12, "/app/server"), reg(13, "/"))
}

func fsImg(t testing.TB) []byte {
	return image(t, "FS", &fs.FsEntry{CwdId: u32(13), RootId: u32(13)})
}

// The process's memory: one page at 0x10000 holding its command line and
// environment.
const memStart = 0x10000

var argv, envp = "/app/server\x00--port\x008080\x00", "HOME=/root\x00TOKEN=tok_abcdefghijklmnop\x00"

func mmImg(t testing.TB, argStart, argEnd uint64) []byte {
	z := u64(0)
	return image(t, "MM", &mm.MmEntry{
		MmStartCode: z, MmEndCode: z, MmStartData: z, MmEndData: z, MmStartStack: z, MmStartBrk: z, MmBrk: z,
		MmArgStart: u64(argStart), MmArgEnd: u64(argEnd),
		MmEnvStart: u64(memStart + uint64(len(argv))), MmEnvEnd: u64(memStart + uint64(len(argv)+len(envp))),
		ExeFileId: u32(12),
		Vmas:      []*vma.VmaEntry{{Start: u64(memStart), End: u64(memStart + 0x1000), Pgoff: z, Shmid: z, Prot: u32(3), Flags: u32(0x22), Status: u32(1), Fd: proto.Int64(-1)}},
	})
}

func pagemapImg(t testing.TB, entries ...*pagemap.PagemapEntry) []byte {
	es := []proto.Message{&pagemap.PagemapHead{PagesId: u32(1)}}
	for _, e := range entries {
		es = append(es, e)
	}
	return image(t, "PAGEMAP", es...)
}

func pagesImg() []byte {
	b := make([]byte, 4096)
	copy(b, argv+envp)
	return b
}

func mntImg(t testing.TB) []byte {
	m := func(id, parent uint32, point, fstype string) *mnt.MntEntry {
		return &mnt.MntEntry{Fstype: u32(0), MntId: u32(id), RootDev: u32(0), ParentMntId: u32(parent), Flags: u32(0),
			Root: proto.String("/"), Mountpoint: proto.String(point), Source: proto.String(fstype), Options: proto.String(""), Fsname: proto.String(fstype)}
	}
	return image(t, "MNTS", m(1, 0, "/", "overlay"), m(2, 1, "/proc", "proc"), m(3, 1, "/data", "ext4"))
}

func statsImg(t testing.TB) []byte {
	return image(t, "STATS", &stats.StatsEntry{Dump: &stats.DumpStatsEntry{FreezingTime: u32(1), FrozenTime: u32(2), MemdumpTime: u32(3),
		MemwriteTime: u32(4), PagesScanned: u64(5), PagesSkippedParent: u64(0), PagesWritten: u64(5), PagesLazy: u64(0)}})
}

// checkpointDir writes a checkpoint: config.dump, and files (member
// names) with their contents. It is nil when OpenDir refuses them, which
// is an answer, not a failure.
func checkpointDir(t *testing.T, files map[string][]byte) *Checkpoint {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, archive.CheckpointDir), 0o700); err != nil {
		t.Fatal(err)
	}
	files[archive.ConfigDump] = []byte(`{"id":"1","name":"web","rootfsImageName":"localhost/app:1","ociRuntime":"runc"}`)
	files[archive.SpecDump] = []byte(`{"process":{"args":["/app/server"]},"root":{"path":"rootfs"},"annotations":{"org.criu.checkpoint.engine.name":"stasis"}}`)
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c, err := OpenDir(dir)
	if err != nil {
		if !strings.Contains(err.Error(), "corrupt or truncated") {
			t.Fatalf("OpenDir: %v", err)
		}
		return nil
	}
	return c
}

func img(name string) string { return archive.CheckpointDir + "/" + name }

// FuzzProcesses: the process tree, and each process's files and sockets
// (pstree.img, core-N.img, ids-N.img, fdinfo-N.img, files.img, fs-N.img;
// the per-process images serve pids 1 and 2).
func FuzzProcesses(f *testing.F) {
	f.Add(pstreeImg(f, [2]uint32{1, 0}, [2]uint32{2, 1}), coreImg(f, 1), idsImg(f), fdinfoImg(f), filesImg(f), fsImg(f))
	f.Add(pstreeImg(f, [2]uint32{1, 0}), coreImg(f, 2), idsImg(f), fdinfoImg(f), filesImg(f), fsImg(f)) // a dead task
	f.Add(pstreeImg(f, [2]uint32{1, 0}, [2]uint32{1, 0}), coreImg(f, 1), idsImg(f), image(f, "FDINFO"), image(f, "FILES"), fsImg(f))
	f.Add(pstreeImg(f, [2]uint32{2, 1}, [2]uint32{1, 2}), coreImg(f, 1), idsImg(f), fdinfoImg(f), filesImg(f), fsImg(f)) // no root
	f.Add(image(f, "PSTREE"), coreImg(f, 1), idsImg(f), fdinfoImg(f), filesImg(f), fsImg(f))                             // no process
	f.Add([]byte{}, []byte{}, []byte{}, []byte{}, []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, pstreeB, coreB, idsB, fdinfoB, filesB, fsB []byte) {
		c := checkpointDir(t, map[string][]byte{
			img("pstree.img"): pstreeB, img("core-1.img"): coreB, img("core-2.img"): coreB, img("ids-1.img"): idsB, img("ids-2.img"): idsB,
			img("fdinfo-1.img"): fdinfoB, img("files.img"): filesB, img("fs-1.img"): fsB, img("fs-2.img"): fsB,
		})
		if c == nil {
			return
		}
		defer treesnap.Watchdog(20 * time.Second)()
		c.Summary()
		c.Processes(ProcessOptions{})
		c.Processes(ProcessOptions{Files: true, Sockets: true})
		c.Processes(ProcessOptions{Pid: 1, Files: true})
	})
}

// pagePresent is CRIU's PE_PRESENT.
const pagePresent = 1 << 2

// FuzzMemory: command lines, environments and the memory search of pid 1
// (mm-1.img, pagemap-1.img, pages-1.img).
func FuzzMemory(f *testing.F) {
	page := &pagemap.PagemapEntry{Vaddr: u64(memStart), CompatNrPages: u32(1), Flags: u32(pagePresent)}
	f.Add(mmImg(f, memStart, memStart+uint64(len(argv))), pagemapImg(f, page), pagesImg())
	f.Add(mmImg(f, memStart, memStart+uint64(len(argv))), pagemapImg(f, &pagemap.PagemapEntry{Vaddr: u64(memStart), CompatNrPages: u32(0), NrPages: u64(1)}), pagesImg())
	f.Add(mmImg(f, memStart, memStart+uint64(len(argv))), pagemapImg(f, &pagemap.PagemapEntry{Vaddr: u64(memStart), CompatNrPages: u32(1), InParent: proto.Bool(true)}), pagesImg())
	f.Add(mmImg(f, memStart+100, memStart), pagemapImg(f, page), pagesImg())      // an inverted range
	f.Add(mmImg(f, 0, 1<<40), pagemapImg(f, page), pagesImg())                    // a huge one
	f.Add(mmImg(f, memStart, memStart+4096), pagemapImg(f, page, page), []byte{}) // pages missing
	f.Add(mmImg(f, memStart, memStart+8), pagemapImg(f, &pagemap.PagemapEntry{Vaddr: u64(1 << 63), CompatNrPages: u32(1 << 31), Flags: u32(pagePresent)}), pagesImg())
	f.Add(mmImg(f, memStart, memStart+8), pagemapImg(f), pagesImg())
	f.Add(pagemapImg(f, page), image(f, "MM", &pagemap.PagemapHead{PagesId: u32(1)}, &pagemap.PagemapHead{PagesId: u32(1)}), pagesImg()) // magics swapped
	f.Fuzz(func(t *testing.T, mmB, pagemapB, pagesB []byte) {
		c := checkpointDir(t, map[string][]byte{
			img("pstree.img"): pstreeImg(t, [2]uint32{1, 0}), img("core-1.img"): coreImg(t, 1), img("files.img"): filesImg(t),
			img("mm-1.img"): mmB, img("pagemap-1.img"): pagemapB, img("pages-1.img"): pagesB,
		})
		if c == nil {
			return
		}
		defer treesnap.Watchdog(20 * time.Second)()
		c.Processes(ProcessOptions{Cmdline: true, Env: true})
		c.SearchMemory(1, "tok_", false, 16)
		c.SearchMemory(1, `TOKEN=[a-z_]+`, true, 0)
	})
}

// FuzzMounts: mountpoints-N.img.
func FuzzMounts(f *testing.F) {
	f.Add(mntImg(f))
	f.Add(image(f, "MNTS"))
	f.Add(image(f, "PAGEMAP", &pagemap.PagemapHead{PagesId: u32(1)})) // another image's magic
	f.Fuzz(func(t *testing.T, b []byte) {
		c := checkpointDir(t, map[string][]byte{img("mountpoints-1.img"): b, img("mountpoints-2.img"): mntImg(t)})
		if c == nil {
			return
		}
		defer treesnap.Watchdog(20 * time.Second)()
		c.Mounts()
	})
}

// FuzzRootfs: rootfs-diff.tar and deleted.files, as --rootfs and --cat
// read them.
func FuzzRootfs(f *testing.F) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/app.conf", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4},
		{Name: "etc/link", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"},
		{Name: "../../etc/passwd", Typeflag: tar.TypeReg, Size: 4},
	} {
		tw.WriteHeader(h)
		if h.Size > 0 {
			tw.Write([]byte("x=1\n"))
		}
	}
	tw.Close()
	f.Add(buf.Bytes(), []byte(`["/var/log/old","/etc/hosts"]`))
	f.Add(buf.Bytes()[:700], []byte(`["/", "../etc"]`))
	f.Add([]byte{}, []byte(`not json`))
	f.Fuzz(func(t *testing.T, diff, deleted []byte) {
		c := checkpointDir(t, map[string][]byte{archive.RootfsDiff: diff, archive.DeletedFiles: deleted})
		if c == nil {
			return
		}
		defer treesnap.Watchdog(20 * time.Second)()
		c.Rootfs()
		for _, p := range []string{"/etc/app.conf", "/etc/link", "/etc/hosts", "/etc", "/../../etc/passwd"} {
			c.Cat(io.Discard, p, "")
		}
	})
}

// FuzzStats: stats-dump.
func FuzzStats(f *testing.F) {
	f.Add(statsImg(f))
	f.Add(statsImg(f)[:14])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		c := checkpointDir(t, map[string][]byte{archive.StatsDump: b})
		if c == nil {
			return
		}
		defer treesnap.Watchdog(20 * time.Second)()
		c.Stats()
	})
}

// TestSeedCheckpoint checks that the hand-built images read as what they
// were built to be, so the seeds reach past the decoding.
func TestSeedCheckpoint(t *testing.T) {
	page := &pagemap.PagemapEntry{Vaddr: u64(memStart), CompatNrPages: u32(1), Flags: u32(pagePresent)}
	c := checkpointDir(t, map[string][]byte{
		img("pstree.img"): pstreeImg(t, [2]uint32{1, 0}, [2]uint32{2, 1}), img("core-1.img"): coreImg(t, 1), img("core-2.img"): coreImg(t, 1),
		img("ids-1.img"): idsImg(t), img("ids-2.img"): idsImg(t), img("fdinfo-1.img"): fdinfoImg(t), img("files.img"): filesImg(t),
		img("fs-1.img"): fsImg(t), img("fs-2.img"): fsImg(t), img("mm-1.img"): mmImg(t, memStart, memStart+uint64(len(argv))), img("mm-2.img"): mmImg(t, 0, 0),
		img("pagemap-1.img"): pagemapImg(t, page), img("pages-1.img"): pagesImg(), img("mountpoints-1.img"): mntImg(t),
		archive.StatsDump: statsImg(t),
	})
	if c == nil {
		t.Fatal("OpenDir refused well-formed images")
	}
	ps, err := c.Processes(ProcessOptions{Files: true, Sockets: true})
	if err != nil || len(ps) != 2 || ps[1].Ppid != 1 || len(ps[0].Files) != 4 || len(ps[0].Sockets) != 1 || ps[0].Sockets[0].Src != "0.0.0.0:8080" {
		t.Fatalf("processes: %v %s", err, dump(ps))
	}
	one, err := c.Processes(ProcessOptions{Pid: 1, Cmdline: true, Env: true})
	if err != nil || fmt.Sprint(one[0].Cmdline) != "[/app/server --port 8080]" || len(one[0].Env) != 2 {
		t.Fatalf("pid 1: %v %s", err, dump(one))
	}
	ms, err := c.SearchMemory(1, `tok_[a-z]+`, true, 0)
	if err != nil || len(ms) != 1 || ms[0].Context != "tok_abcdefghijklmnop" || ms[0].Mapping != "anon" {
		t.Fatalf("search: %v %s", err, dump(ms))
	}
	mounts, err := c.Mounts()
	if err != nil || len(mounts) != 3 || mounts[0].Mountpoint != "/" || mounts[0].Fstype != "overlay" {
		t.Fatalf("mounts: %v %s", err, dump(mounts))
	}
	if st, err := c.Stats(); err != nil || st.FrozenTime != 2 {
		t.Fatalf("stats: %v %v", st, err)
	}
}

func dump(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
