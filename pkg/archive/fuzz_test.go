package archive

// Fuzz targets for the readers of checkpoint archives, which come from
// other machines and other engines: Extract (decompression sniffed from
// the bytes, the tar, the members a checkpoint needs), ReadMetadata, and
// the JSON members. Each must end in an error at worst, never a panic or a
// hang; an error the bytes cause wraps ErrInvalid (the agent answers 400
// for it), and what Extract leaves is only regular files and directories.

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/stasis-dev/stasis/pkg/untar"
)

const (
	fuzzConfig = `{"id":"0123","name":"web","rootfsImageName":"localhost/app:1","rootfsImageRef":"abcd","ociRuntime":"runc","createdTime":"2025-01-01T00:00:00Z"}`
	fuzzSpec   = `{"ociVersion":"1.2.0","process":{"args":["/app"],"cwd":"/"},"root":{"path":"rootfs"},"annotations":{"org.criu.checkpoint.engine.name":"stasis"}}`
)

// member is one entry of a hand-built archive tar.
type member struct {
	name, body string
	typ        byte
}

// checkpointTar is a minimal checkpoint as a plain tar, with extra
// members appended (or the standard ones replaced, by name).
func checkpointTar(extra ...member) []byte {
	ms := []member{
		{name: ConfigDump, body: fuzzConfig},
		{name: SpecDump, body: fuzzSpec},
		{name: DeletedFiles, body: `["/etc/old"]`},
		{name: CheckpointDir + "/", typ: tar.TypeDir},
		{name: CheckpointDir + "/inventory.img", body: "\x54\x59\x54\x58inventory"},
	}
	for _, e := range extra {
		replaced := false
		for i := range ms {
			if ms[i].name == e.name {
				ms[i], replaced = e, true
			}
		}
		if !replaced {
			ms = append(ms, e)
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range ms {
		h := &tar.Header{Name: m.name, Typeflag: m.typ, Mode: 0o600, ModTime: time.Unix(1700000000, 0)}
		switch m.typ {
		case 0:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(m.body))
		case tar.TypeSymlink, tar.TypeLink:
			h.Linkname = m.body
		case tar.TypeDir:
			h.Mode = 0o700
		}
		tw.WriteHeader(h)
		if h.Size > 0 {
			tw.Write([]byte(m.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

// compressed writes b as Write would with compression c.
func compressed(t testing.TB, b []byte, c Compression) []byte {
	var buf bytes.Buffer
	w, err := compressor(&buf, c)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// zstdRaw is one zstd frame holding b in raw blocks, with the window the
// header declares: windowLog (10-41) for a frame with a window descriptor,
// or, with windowLog 0, a single-segment frame whose content size field
// says fcs.
func zstdRaw(b []byte, windowLog int, fcs uint64) []byte {
	out := append([]byte{}, zstdMagic...)
	if windowLog > 0 {
		out = append(out, 0x00, byte(windowLog-10)<<3)
	} else {
		out = append(out, 0xe0) // single segment, 8-byte content size
		out = binary.LittleEndian.AppendUint64(out, fcs)
	}
	for {
		n := min(len(b), 64<<10)
		hdr := uint32(n) << 3 // a raw block
		if n == len(b) {
			hdr |= 1 // the last
		}
		out = append(out, byte(hdr), byte(hdr>>8), byte(hdr>>16))
		out = append(out, b[:n]...)
		if b = b[n:]; hdr&1 == 1 {
			return out
		}
	}
}

// archiveSeeds are hand-built archives; valid ones first.
func archiveSeeds(t testing.TB) [][]byte {
	plain := checkpointTar()
	podman := checkpointTar(member{name: "./" + ConfigDump, body: fuzzConfig}, member{name: "./stats-dump", body: "\xe2\x4f\x89\x57"})
	return [][]byte{
		plain,
		compressed(t, plain, Gzip),
		compressed(t, plain, Zstd),
		zstdRaw(plain, 22, 0), // a 4 MiB window: accepted
		podman,
		checkpointTar(member{name: RootfsDiff, body: string(checkpointTar())}),
		append(compressed(t, plain, Zstd), "trailing garbage"...),
		compressed(t, plain, Gzip)[:200],
		checkpointTar(member{name: "checkpoint/pages-1.img", typ: tar.TypeSymlink, body: "/etc/shadow"}),
		checkpointTar(member{name: "checkpoint/link", typ: tar.TypeLink, body: ConfigDump}),
		checkpointTar(member{name: "checkpoint/fifo", typ: tar.TypeFifo}),
		checkpointTar(member{name: "checkpoint/null", typ: tar.TypeChar}),
		checkpointTar(member{name: "../escape", body: "x"}),
		checkpointTar(member{name: "/abs", body: "x"}),
		checkpointTar(member{name: CheckpointDir + "/inventory.img", typ: tar.TypeDir}),
		checkpointTar(member{name: CheckpointDir + "/", body: "not a dir"}),
		checkpointTar(member{name: ConfigDump + "/", typ: tar.TypeDir}),
		checkpointTar(member{name: SpecDump, body: `{"ociVersion":"1.2.0"}`}),
		checkpointTar(member{name: ConfigDump, body: `{"name":`}),
		[]byte("age-encryption.org/v1\n-> X25519 abc\n"),
		zstdRaw(plain, 28, 0),    // a 256 MiB window
		zstdRaw(plain, 0, 1<<40), // a single segment of a terabyte
		zstdRaw(plain, 0, 1<<20), // a content size that is wrong
		{},
	}
}

// fuzzTimeout bounds one run; a hang is a crash (see watchdog).
const fuzzTimeout = 20 * time.Second

func FuzzExtract(f *testing.F) {
	for _, b := range archiveSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tmp := t.TempDir()
		path := filepath.Join(tmp, "archive")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(tmp, "out")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), fuzzTimeout)
		defer cancel()
		defer watchdog(fuzzTimeout + 10*time.Second)()
		d, err := Extract(ctx, path, dir, ReadOptions{MaxUnpack: 4 << 20})
		if ctx.Err() != nil {
			t.Fatalf("Extract ran past its deadline: %v", err)
		}
		if err != nil && !errors.Is(err, ErrInvalid) && !errors.Is(err, untar.ErrTooLarge) && !errors.Is(err, ErrEncrypted) {
			t.Errorf("error does not wrap ErrInvalid: %v", err)
		}
		filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err == nil && !e.Type().IsRegular() && !e.IsDir() {
				t.Errorf("%s is a %v", p, e.Type())
			}
			return nil
		})
		if err != nil {
			return
		}
		if err := d.Validate(); err != nil {
			t.Errorf("Extract returned a checkpoint that does not validate: %v", err)
		}
		checkMembers(t, d)
	})
}

func FuzzReadMetadata(f *testing.F) {
	for _, b := range archiveSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "archive")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		defer watchdog(fuzzTimeout)()
		cfg, spec, err := ReadMetadata(path)
		switch {
		case err != nil && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrEncrypted):
			t.Errorf("error does not wrap ErrInvalid: %v", err)
		case err == nil && (cfg == nil || spec == nil):
			t.Errorf("no error, but config %v and spec %v", cfg, spec)
		}
	})
}

// FuzzMembers feeds the same bytes to config.dump, spec.dump and
// deleted.files.
func FuzzMembers(f *testing.F) {
	for _, s := range []string{fuzzConfig, fuzzSpec, `["/etc/old","/var/log/x"]`, `[]`, `null`, `{}`, `{"name":1}`,
		`{"process":null,"root":{}}`, `["/", "../x"]`, `[` + string(bytes.Repeat([]byte(`[`), 20000)), "\xff\xfe"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		for _, m := range []string{ConfigDump, SpecDump, DeletedFiles} {
			if err := os.WriteFile(filepath.Join(dir, m), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		defer watchdog(fuzzTimeout)()
		checkMembers(t, Dir(dir))
	})
}

// checkMembers reads the JSON members; errors must wrap ErrInvalid.
func checkMembers(t *testing.T, d Dir) {
	if _, err := d.Config(); err != nil && !errors.Is(err, ErrInvalid) {
		t.Errorf("config.dump: error does not wrap ErrInvalid: %v", err)
	}
	spec, err := d.Spec()
	switch {
	case err != nil && !errors.Is(err, ErrInvalid):
		t.Errorf("spec.dump: error does not wrap ErrInvalid: %v", err)
	case err == nil && (spec.Process == nil || spec.Root == nil):
		t.Errorf("spec.dump: accepted without process or root")
	}
	if _, err := d.Deleted(); err != nil && !errors.Is(err, ErrInvalid) {
		t.Errorf("deleted.files: error does not wrap ErrInvalid: %v", err)
	}
}

// TestSeedArchives checks what the seeds are for: the valid ones extract,
// and a zstd window over MaxZstdWindow is refused however it is declared.
func TestSeedArchives(t *testing.T) {
	s := archiveSeeds(t)
	for i, b := range map[string][]byte{"plain": s[0], "gzip": s[1], "zstd": s[2], "zstd 4 MiB window": s[3], "podman names": s[4], "rootfs diff": s[5]} {
		path := filepath.Join(t.TempDir(), "a")
		os.WriteFile(path, b, 0o600)
		if _, err := Extract(context.Background(), path, t.TempDir(), ReadOptions{}); err != nil {
			t.Errorf("%s: %v", i, err)
		}
		if _, _, err := ReadMetadata(path); err != nil {
			t.Errorf("%s: metadata: %v", i, err)
		}
	}
	for _, b := range [][]byte{zstdRaw(s[0], 28, 0), zstdRaw(s[0], 0, MaxZstdWindow+1)} {
		path := filepath.Join(t.TempDir(), "a")
		os.WriteFile(path, b, 0o600)
		_, err := Extract(context.Background(), path, t.TempDir(), ReadOptions{})
		if !errors.Is(err, ErrInvalid) || !(errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded)) {
			t.Errorf("a zstd window over %d bytes: %v", MaxZstdWindow, err)
		}
	}
}

// watchdog crashes the process when a call outlives d: Go's fuzzer records
// the input of a crashed worker, but has no timeout of its own.
func watchdog(d time.Duration) (stop func()) {
	tm := time.AfterFunc(d, func() { panic(fmt.Sprintf("still running after %v: a hang", d)) })
	return func() { tm.Stop() }
}
