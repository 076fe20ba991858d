package archive

import (
	"fmt"
	"io"
	"os"
	"time"
)

// Captured is one member compressed before the archive is written: its
// bytes came from a stream (a FIFO CRIU wrote pages into), were compressed
// into zstd frames as they arrived, and wait in a spool file until the
// archive splices them in whole. Only zstd archives can take them.
type Captured struct {
	// Name is the member's path in the archive, e.g. checkpoint/pages-1.img.
	Name    string
	Size    int64 // uncompressed
	ModTime time.Time
	spool   string
	frames  []Frame
}

// Capture reads r to its end and compresses it into spool. The caller
// removes the spool once the archive is written.
func Capture(name string, r io.Reader, spool string) (*Captured, error) {
	f, err := os.OpenFile(spool, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("capture %s: %w", name, err)
	}
	defer f.Close()
	fw, err := newFrameWriter(f)
	if err != nil {
		return nil, err
	}
	n, err := io.Copy(fw, r)
	if cerr := fw.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("capture %s: %w", name, err)
	}
	return &Captured{Name: name, Size: n, ModTime: time.Now(), spool: spool, frames: fw.frames}, nil
}
