package pages

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type image struct{ *bytes.Reader }

func newImage(b []byte) image { return image{bytes.NewReader(b)} }

// client speaks the lazy-pages daemon's side of CRIU's protocol.
type client struct {
	t    *testing.T
	conn net.Conn
}

func (c *client) get(pid uint32, vaddr uint64, nr uint32) (iov, []byte, error) {
	var b [iovSize]byte
	(&iov{cmd: psIovGet, nrPages: nr, vaddr: vaddr, dstID: uint64(pid)}).encode(b[:])
	if _, err := c.conn.Write(b[:]); err != nil {
		return iov{}, nil, err
	}
	if _, err := io.ReadFull(c.conn, b[:]); err != nil {
		return iov{}, nil, err
	}
	var got iov
	got.decode(b[:])
	data := make([]byte, uint64(got.nrPages)*PageSize)
	_, err := io.ReadFull(c.conn, data)
	return got, data, err
}

func serve(t *testing.T, src *Source) (*client, chan error) {
	t.Helper()
	ours, theirs := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- Serve(ours, src); ours.Close() }()
	t.Cleanup(func() { theirs.Close() })
	return &client{t: t, conn: theirs}, done
}

// Pages come back from where the pagemap says they lie in the pages image,
// an answer stops at the end of its run, and a close is acknowledged.
func TestServeAnswersAsCRIUsPageServerDoes(t *testing.T) {
	ps := PageSize
	img := make([]byte, 6*ps)
	rand.Read(img)
	src := &Source{
		Maps: map[uint32]*Map{7: {PagesID: 3, Runs: []Run{
			{Vaddr: 0x10000, Length: 2 * ps, Offset: 0},
			{Vaddr: 0x40000, Length: 4 * ps, Offset: 2 * ps, Lazy: true},
		}}},
		Images: map[uint32]Image{3: newImage(img)},
	}
	c, done := serve(t, src)

	got, data, err := c.get(7, 0x40000+ps, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got.cmd != psIovAddF|flagPresent<<psCmdBits || got.nrPages != 2 || got.vaddr != 0x40000+ps || got.dstID != 7 {
		t.Fatalf("answer header %+v", got)
	}
	if !bytes.Equal(data, img[3*ps:5*ps]) {
		t.Fatal("pages differ from the pages image at the run's offset")
	}
	// Ten asked for, three left in the run: three come.
	got, data, err = c.get(7, 0x40000+ps, 10)
	if err != nil || got.nrPages != 3 || !bytes.Equal(data, img[3*ps:6*ps]) {
		t.Fatalf("a request past its run's end: %+v, %v", got, err)
	}

	var b [iovSize]byte
	(&iov{cmd: psIovForceClose}).encode(b[:])
	c.conn.Write(b[:])
	var status [4]byte
	if _, err := io.ReadFull(c.conn, status[:]); err != nil || binary.LittleEndian.Uint32(status[:]) != 0 {
		t.Fatalf("close answered %v, %v", status, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// What the checkpoint does not have ends the session with an error (the
// daemon then fails rather than fill memory with something else).
func TestServeRefusesWhatTheCheckpointLacks(t *testing.T) {
	ps := PageSize
	src := &Source{
		Maps:   map[uint32]*Map{1: {PagesID: 1, Runs: []Run{{Vaddr: 0x10000, Length: ps, Lazy: true}}}},
		Images: map[uint32]Image{1: newImage(make([]byte, ps))},
	}
	for name, req := range map[string]iov{
		"no such pid":      {cmd: psIovGet, nrPages: 1, vaddr: 0x10000, dstID: 2},
		"unmapped":         {cmd: psIovGet, nrPages: 1, vaddr: 0x20000, dstID: 1},
		"unaligned":        {cmd: psIovGet, nrPages: 1, vaddr: 0x10001, dstID: 1},
		"zero pages":       {cmd: psIovGet, nrPages: 0, vaddr: 0x10000, dstID: 1},
		"too many pages":   {cmd: psIovGet, nrPages: 1 << 30, vaddr: 0x10000, dstID: 1},
		"unknown command":  {cmd: 99},
		"pid out of range": {cmd: psIovGet, nrPages: 1, vaddr: 0x10000, dstID: 1 | 1<<32},
	} {
		c, done := serve(t, src)
		var b [iovSize]byte
		req.encode(b[:])
		go c.conn.Write(b[:])
		if err := <-done; err == nil {
			t.Errorf("%s: served", name)
		}
	}
	// A pages image shorter than its pagemap says.
	src.Images[1] = newImage(make([]byte, 10))
	c, done := serve(t, src)
	go c.get(1, 0x10000, 1)
	if err := <-done; err == nil {
		t.Error("a truncated pages image was served")
	}
}

// WriteResident writes the runs criu restore reads itself and leaves holes
// for the lazy ones; pages images no process names are written whole.
func TestWriteResident(t *testing.T) {
	ps := PageSize
	img := make([]byte, 4*ps)
	rand.Read(img)
	shm := []byte(strings.Repeat("s", int(ps)))
	src := &Source{
		Maps: map[uint32]*Map{1: {PagesID: 1, Runs: []Run{
			{Vaddr: 0x10000, Length: ps, Offset: 0},
			{Vaddr: 0x20000, Length: 2 * ps, Offset: ps, Lazy: true},
			{Vaddr: 0x90000, Length: ps, Offset: 3 * ps},
		}}},
	}
	images := map[string]Image{"pages-1.img": newImage(img), "pages-2.img": newImage(shm)}
	dir := t.TempDir()
	n, err := WriteResident(dir, src, images, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(2*ps+ps) {
		t.Errorf("wrote %d bytes, want the two resident pages and the shared image", n)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "pages-1.img"))
	want := append(append(append([]byte{}, img[:ps]...), make([]byte, 2*ps)...), img[3*ps:]...)
	if !bytes.Equal(got, want) {
		t.Error("pages-1.img is not the resident runs with holes for the lazy one")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "pages-2.img")); !bytes.Equal(b, shm) {
		t.Error("the image no pagemap names was not written whole")
	}
	if _, err := WriteResident(dir, src, images, 1<<30); err == nil {
		t.Error("pages images already there were written over")
	}
	if _, err := WriteResident(t.TempDir(), src, images, int64(ps)); err == nil {
		t.Error("the limit was not kept")
	}
}
