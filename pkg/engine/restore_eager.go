package engine

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/stasis-dev/stasis/pkg/archive"
	"github.com/stasis-dev/stasis/pkg/untar"
)

// memDir, in a restore's work directory, is where an eager restore unpacks
// into memory (extractToMemory): a tmpfs of its own.
const memDir = "mem"

// errNoMemoryPath says an eager restore cannot unpack into memory: it
// unpacks onto the disk instead.
var errNoMemoryPath = errors.New("no unpacking into memory")

// extractToMemory unpacks an indexed archive for an eager restore into a
// tmpfs of its own, sized to the archive: the memory the restored process
// takes a moment later anyway. Its frames are checked against the index and
// decompressed on every core, and no page goes through the disk's
// writeback, which is what an unpacking onto the disk waits for. The
// returned unmount frees that memory once CRIU has read the pages. It
// returns errNoMemoryPath when the archive has no index, the source does not
// vouch for it, it shares a rootfs diff with other stored checkpoints, or
// the host has not twice its size free.
func (e *Engine) extractToMemory(ctx context.Context, src *source, work string) (_ archive.Dir, _ func() error, err error) {
	if !indexTrusted(src) || src.rootfsDiff != "" {
		return "", nil, errNoMemoryPath
	}
	f, s, err := openIndexed(ctx, src, work)
	if errors.Is(err, archive.ErrNoIndex) {
		return "", nil, errNoMemoryPath
	}
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	// The tar stream and room for CRIU's restore log, and for the 5 % of
	// a filesystem an unpacking leaves free (untar.Limit).
	size := s.Size() + s.Size()/16 + 16<<20
	if avail, err := memAvailable(); err != nil || avail < 2*size+512<<20 {
		return "", nil, errNoMemoryPath
	}
	dir := filepath.Join(work, memDir)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", nil, err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC,
		fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		os.Remove(dir) // the disk unpacking goes into work instead
		return "", nil, errNoMemoryPath
	}
	unmount := func() error { return unix.Unmount(dir, unix.MNT_DETACH) }
	defer func() {
		if err != nil {
			unmount()
		}
	}()
	d, spans, err := archive.ExtractExcept(ctx, s, dir, archive.ReadOptions{MaxUnpack: e.maxUnpack}, isPagesImage)
	if err != nil {
		return "", nil, err // unpack names the archive
	}
	limit, err := untar.Limit(dir, e.maxUnpack)
	if err != nil {
		return "", nil, err
	}
	var total int64
	for _, sp := range spans {
		total += sp.Size
	}
	if total > limit {
		return "", nil, fmt.Errorf("archive %s: %w: its pages images take %d bytes, %d may be written", src.archive, untar.ErrTooLarge, total, limit)
	}
	for name, sp := range spans {
		if err := writeMember(ctx, s, filepath.Join(dir, name), sp); err != nil {
			return "", nil, fmt.Errorf("archive %s: %s: %w", src.archive, name, err)
		}
	}
	return d, unmount, nil
}

// writeMember writes the member at sp as a new file at p.
func writeMember(ctx context.Context, s *archive.Seekable, p string, sp archive.Span) error {
	// The unpacking left the member out: anything at p is not ours.
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	err = s.CopyMember(ctx, f, sp)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// memAvailable is the kernel's estimate of the memory free for new work.
func memAvailable() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no MemAvailable in /proc/meminfo")
}
