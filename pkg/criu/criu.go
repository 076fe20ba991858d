// Package criu finds CRIU, checks that it can work on this machine, and
// reads the statistics it leaves behind after a dump or a restore.
package criu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/stats"

	"github.com/stasis-dev/stasis/pkg/untar"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// MinMajor is the oldest CRIU major version stasis accepts: 3.x cannot dump
// on kernels from 6.13 on (their vDSO layout changed).
const MinMajor = 4

var versionRE = regexp.MustCompile(`Version:\s*(\d+)\.(\d+)(?:\.(\d+))?`)

// Version returns CRIU's version string ("4.1.1").
func Version() (string, error) {
	path, err := exec.LookPath("criu")
	if err != nil {
		return "", fmt.Errorf("criu not found on PATH (run hack/deps.sh): %w", err)
	}
	out, err := exec.Command(path, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("criu --version: %w: %s", err, out)
	}
	m := versionRE.FindStringSubmatch(string(out))
	if m == nil {
		return "", fmt.Errorf("criu --version: unexpected output %q", out)
	}
	v := m[1] + "." + m[2]
	if m[3] != "" {
		v += "." + m[3]
	}
	return v, nil
}

// Check fails with an actionable message when CRIU is missing or too old.
func Check() (string, error) {
	v, err := Version()
	if err != nil {
		return "", err
	}
	major, _ := strconv.Atoi(strings.SplitN(v, ".", 2)[0])
	if major < MinMajor {
		return v, fmt.Errorf("criu %s is too old: stasis needs %d.0 or newer (run hack/deps.sh)", v, MinMajor)
	}
	return v, nil
}

// DumpStats and RestoreStats are the figures CRIU records, in
// microseconds and pages; they are the wire's, so that the agent's answers
// carry them as they are.
type (
	DumpStats    = wire.DumpStats
	RestoreStats = wire.RestoreStats
)

// ReadDumpStats reads stats-dump from dir.
func ReadDumpStats(dir string) (*DumpStats, error) {
	st, err := readStats(dir, stats.StatsDump)
	if err != nil {
		return nil, fmt.Errorf("read CRIU dump stats: %w", err)
	}
	s := st.GetDump()
	return &DumpStats{
		FreezingTime: s.GetFreezingTime(), FrozenTime: s.GetFrozenTime(),
		MemdumpTime: s.GetMemdumpTime(), MemwriteTime: s.GetMemwriteTime(),
		PagesScanned: s.GetPagesScanned(), PagesWritten: s.GetPagesWritten(),
	}, nil
}

// ReadRestoreStats reads stats-restore from dir.
func ReadRestoreStats(dir string) (*RestoreStats, error) {
	st, err := readStats(dir, stats.StatsRestore)
	if err != nil {
		return nil, fmt.Errorf("read CRIU restore stats: %w", err)
	}
	s := st.GetRestore()
	return &RestoreStats{
		ForkingTime: s.GetForkingTime(), RestoreTime: s.GetRestoreTime(), PagesRestored: s.GetPagesRestored(),
	}, nil
}

// readStats reads a statistics image of dir, which may come from an
// archive: opened through no link, its sizes checked (go-criu's reader
// slices by the recorded size and panics on a short file).
func readStats(dir, name string) (*stats.StatsEntry, error) {
	b, err := untar.ReadFile(dir, name, 1<<20)
	if err != nil {
		return nil, err
	}
	return DecodeStats(b)
}

// DecodeStats decodes a CRIU statistics image (stats-dump, stats-restore).
func DecodeStats(b []byte) (*stats.StatsEntry, error) {
	if len(b) < stats.PayloadOffset {
		return nil, errors.New("statistics image is truncated")
	}
	if binary.LittleEndian.Uint32(b[stats.PrimaryMagicOffset:]) != stats.ImgServiceMagic ||
		binary.LittleEndian.Uint32(b[stats.SecondaryMagicOffset:]) != stats.StatsMagic {
		return nil, errors.New("not a CRIU statistics image (wrong magic)")
	}
	size := binary.LittleEndian.Uint32(b[stats.SizeOffset:])
	if uint64(size) > uint64(len(b)-stats.PayloadOffset) {
		return nil, fmt.Errorf("statistics image is truncated: %d bytes recorded, %d there", size, len(b)-stats.PayloadOffset)
	}
	st := &stats.StatsEntry{}
	if err := st.UnmarshalVT(b[stats.PayloadOffset : stats.PayloadOffset+int(size)]); err != nil {
		return nil, err
	}
	return st, nil
}

// ErrorLines returns the last max lines of a CRIU log that report an error:
// what a user needs to see of a log thousands of lines long.
func ErrorLines(log []byte, max int) []string {
	var errs []string
	for _, l := range strings.Split(string(log), "\n") {
		if strings.Contains(l, "Error") {
			errs = append(errs, strings.TrimSpace(l))
		}
	}
	if len(errs) > max {
		errs = errs[len(errs)-max:]
	}
	return errs
}
