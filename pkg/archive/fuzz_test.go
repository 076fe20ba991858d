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
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/stasis-dev/stasis/pkg/untar"

	"github.com/stasis-dev/stasis/internal/treesnap"
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
// members appended (or the standard ones replaced, by name: "checkpoint"
// is not "checkpoint/"). An entry tar.Writer refuses ends the test, so
// every member is in the tar.
func checkpointTar(t testing.TB, extra ...member) []byte {
	t.Helper()
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
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("checkpointTar: %s: %v", m.name, err)
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte(m.body)); err != nil {
				t.Fatalf("checkpointTar: %s: %v", m.name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatalf("checkpointTar: %v", err)
	}
	return buf.Bytes()
}

// compressed writes b as Write would with compression c.
func compressed(t testing.TB, b []byte, c Compression) []byte {
	var buf bytes.Buffer
	w, err := compressor(&buf, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// indexed is b as a zstd archive of stasis': frames, then their index.
func indexed(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	fw, err := newFrameWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	fw.index = true
	// Two frames at least, so a seek crosses one.
	if _, err := fw.Write(b[:len(b)/2]); err != nil {
		t.Fatal(err)
	}
	if err := fw.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := fw.Write(b[len(b)/2:]); err != nil {
		t.Fatal(err)
	}
	if err := fw.Close(); err != nil {
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

// archiveSeed is a hand-built archive and what reading it must give.
type archiveSeed struct {
	name string
	b    []byte
	// refused is what Extract's error must wrap (ErrInvalid, or
	// ErrEncrypted); nil: the archive extracts and validates.
	refused error
	// badMember is, for an archive that extracts, the JSON member whose
	// reader must refuse it with ErrInvalid ("" for none: then
	// ReadMetadata and every member read must succeed).
	badMember string
}

// archiveSeeds are hand-built archives; valid ones first.
func archiveSeeds(t testing.TB) []archiveSeed {
	plain := checkpointTar(t)
	podman := checkpointTar(t, member{name: "./" + ConfigDump, body: fuzzConfig}, member{name: "./stats-dump", body: "\xe2\x4f\x89\x57"})
	return []archiveSeed{
		{name: "plain", b: plain},
		{name: "gzip", b: compressed(t, plain, Gzip)},
		{name: "zstd", b: compressed(t, plain, Zstd)},
		{name: "zstd 4 MiB window", b: zstdRaw(plain, 22, 0)}, // accepted
		{name: "podman names", b: podman},
		{name: "rootfs diff", b: checkpointTar(t, member{name: RootfsDiff, body: string(checkpointTar(t))})},
		{name: "zstd, trailing garbage", b: append(compressed(t, plain, Zstd), "trailing garbage"...), refused: ErrInvalid},
		{name: "gzip, truncated", b: compressed(t, plain, Gzip)[:200], refused: ErrInvalid},
		{name: "symlink image", b: checkpointTar(t, member{name: "checkpoint/pages-1.img", typ: tar.TypeSymlink, body: "/etc/shadow"}), refused: ErrInvalid},
		{name: "hard link", b: checkpointTar(t, member{name: "checkpoint/link", typ: tar.TypeLink, body: ConfigDump}), refused: ErrInvalid},
		{name: "fifo", b: checkpointTar(t, member{name: "checkpoint/fifo", typ: tar.TypeFifo}), refused: ErrInvalid},
		{name: "char device", b: checkpointTar(t, member{name: "checkpoint/null", typ: tar.TypeChar}), refused: ErrInvalid},
		{name: "dotdot", b: checkpointTar(t, member{name: "../escape", body: "x"}), refused: ErrInvalid},
		{name: "absolute", b: checkpointTar(t, member{name: "/abs", body: "x"}), refused: ErrInvalid},
		{name: "inventory is a dir", b: checkpointTar(t, member{name: CheckpointDir + "/inventory.img", typ: tar.TypeDir}), refused: ErrInvalid},
		// Last, it replaces the directory and the image in it.
		{name: "checkpoint is a file", b: checkpointTar(t, member{name: CheckpointDir, body: "not a dir"}), refused: ErrInvalid},
		{name: "config is a dir", b: checkpointTar(t, member{name: ConfigDump + "/", typ: tar.TypeDir}), refused: ErrInvalid},
		// Extract checks that the JSON members are there, not what they say.
		{name: "spec without process", b: checkpointTar(t, member{name: SpecDump, body: `{"ociVersion":"1.2.0"}`}), badMember: SpecDump},
		{name: "config truncated", b: checkpointTar(t, member{name: ConfigDump, body: `{"name":`}), badMember: ConfigDump},
		{name: "encrypted", b: []byte("age-encryption.org/v1\n-> X25519 abc\n"), refused: ErrEncrypted},
		{name: "zstd 256 MiB window", b: zstdRaw(plain, 28, 0), refused: ErrInvalid},
		{name: "zstd terabyte segment", b: zstdRaw(plain, 0, 1<<40), refused: ErrInvalid},
		{name: "zstd wrong content size", b: zstdRaw(plain, 0, 1<<20), refused: ErrInvalid},
		{name: "empty", b: []byte{}, refused: ErrInvalid},
	}
}

// fuzzTimeout bounds one run; a hang is a crash (see treesnap.Watchdog).
const fuzzTimeout = 20 * time.Second

func FuzzExtract(f *testing.F) {
	for _, s := range archiveSeeds(f) {
		f.Add(s.b)
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
		defer treesnap.Watchdog(fuzzTimeout + 10*time.Second)()
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

// FuzzExtractExcept: an indexed archive unpacked but for its pages
// images, as a lazy restore does, and read frame by frame: errors that say
// what was wrong, only regular files and directories written, no panic and
// no hang, whatever the index claims.
func FuzzExtractExcept(f *testing.F) {
	for _, s := range archiveSeeds(f) {
		f.Add(s.b)
		if len(s.b) > 1 {
			f.Add(indexed(f, s.b))
		}
	}
	pages := checkpointTar(f, member{name: CheckpointDir + "/pages-1.img", body: strings.Repeat("p", 9000)})
	f.Add(indexed(f, pages))
	f.Fuzz(func(t *testing.T, b []byte) {
		defer treesnap.Watchdog(fuzzTimeout)()
		s, err := OpenSeekable(bytes.NewReader(b), int64(len(b)), "")
		if err != nil {
			if !errors.Is(err, ErrNoIndex) && !errors.Is(err, ErrInvalid) {
				t.Errorf("index error does not wrap ErrNoIndex or ErrInvalid: %v", err)
			}
			return
		}
		if _, err := io.Copy(io.Discard, io.NewSectionReader(s, 0, s.Size())); err != nil &&
			!errors.Is(err, ErrInvalid) && !errors.Is(err, ErrDigest) {
			t.Errorf("read error does not wrap ErrInvalid or ErrDigest: %v", err)
		}
		dir := t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), fuzzTimeout)
		defer cancel()
		_, spans, err := ExtractExcept(ctx, s, dir, ReadOptions{MaxUnpack: 4 << 20}, func(name string) bool {
			return strings.HasPrefix(name, CheckpointDir+"/pages-")
		})
		if err != nil && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrDigest) && !errors.Is(err, untar.ErrTooLarge) {
			t.Errorf("error does not say what was wrong: %v", err)
		}
		for name, sp := range spans {
			if sp.Offset < 0 || sp.Size < 0 || sp.Offset+sp.Size > s.Size() {
				t.Errorf("%s: span %+v outside the %d-byte stream", name, sp, s.Size())
			}
		}
		filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err == nil && !e.Type().IsRegular() && !e.IsDir() {
				t.Errorf("%s is a %v", p, e.Type())
			}
			if err == nil && strings.HasPrefix(e.Name(), "pages-") {
				t.Errorf("%s was skipped yet written", p)
			}
			return nil
		})
	})
}

func FuzzReadMetadata(f *testing.F) {
	for _, s := range archiveSeeds(f) {
		f.Add(s.b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "archive")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		defer treesnap.Watchdog(fuzzTimeout)()
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
		defer treesnap.Watchdog(fuzzTimeout)()
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
// the hostile ones are refused (by Extract, or by the reader of the member
// they spoil), and a zstd window over MaxZstdWindow is refused however it
// is declared.
func TestSeedArchives(t *testing.T) {
	seeds := archiveSeeds(t)
	for _, s := range seeds {
		t.Run(s.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "a")
			if err := os.WriteFile(path, s.b, 0o600); err != nil {
				t.Fatal(err)
			}
			d, err := Extract(context.Background(), path, t.TempDir(), ReadOptions{})
			if s.refused != nil {
				if !errors.Is(err, s.refused) {
					t.Errorf("extract: got %v, want %v", err, s.refused)
				}
				if s.refused == ErrEncrypted {
					if _, _, err := ReadMetadata(path); !errors.Is(err, ErrEncrypted) {
						t.Errorf("metadata: got %v, want %v", err, ErrEncrypted)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("extract: %v", err)
			}
			read := map[string]func() error{
				ConfigDump:   func() error { _, err := d.Config(); return err },
				SpecDump:     func() error { _, err := d.Spec(); return err },
				DeletedFiles: func() error { _, err := d.Deleted(); return err },
			}
			for m, r := range read {
				err := r()
				switch {
				case m == s.badMember && !errors.Is(err, ErrInvalid):
					t.Errorf("%s: got %v, want %v", m, err, ErrInvalid)
				case m != s.badMember && err != nil:
					t.Errorf("%s: %v", m, err)
				}
			}
			_, _, err = ReadMetadata(path)
			switch s.badMember {
			case "", DeletedFiles:
				if err != nil {
					t.Errorf("metadata: %v", err)
				}
			case ConfigDump:
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("metadata: got %v, want %v", err, ErrInvalid)
				}
			}
		})
	}
	for _, b := range [][]byte{zstdRaw(seeds[0].b, 28, 0), zstdRaw(seeds[0].b, 0, MaxZstdWindow+1)} {
		path := filepath.Join(t.TempDir(), "a")
		os.WriteFile(path, b, 0o600)
		_, err := Extract(context.Background(), path, t.TempDir(), ReadOptions{})
		if !errors.Is(err, ErrInvalid) || !(errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded)) {
			t.Errorf("a zstd window over %d bytes: %v", MaxZstdWindow, err)
		}
	}
}
