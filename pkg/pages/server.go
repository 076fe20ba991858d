package pages

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Source is a checkpoint's memory as the server hands it out: each
// process's pagemap, and the pages images, wherever their bytes lie. An
// image that can prefetch (Prefetcher) is told where reads go next.
type Source struct {
	// Maps holds each process's pagemap by its pid in the checkpoint.
	Maps map[uint32]*Map
	// Images holds each pages image by its ID (Map.PagesID).
	Images map[uint32]Image
}

// Image is a pages image's bytes (archive.Member is one).
type Image interface {
	io.ReaderAt
	Size() int64
}

// Prefetcher is a pages image that can start fetching the bytes at off
// before they are asked for (archive.Member does).
type Prefetcher interface {
	Prefetch(off int64)
}

// CRIU's page server protocol (criu/page-xfer.c): every message starts
// with a page_server_iov, four little-endian fields of 4, 4, 8 and 8 bytes.
// The lazy-pages daemon asks with PS_IOV_GET for nr_pages at vaddr of the
// process dst_id; the answer is a PS_IOV_ADD_F header saying how many pages
// follow (a prefix of the request), then the pages. PS_IOV_FORCE_CLOSE,
// when the daemon is done, is answered with a 4-byte status.
const (
	psIovAddF       = 6
	psIovGet        = 7
	psIovClose      = 0x1023
	psIovForceClose = 0x1024
	psCmdBits       = 16
	iovSize         = 24

	// maxRequest bounds one answer: the daemon asks for at most 4 MiB
	// (its MAX_XFER_LEN) in the background, a page or a few on a fault.
	maxRequest = 64 << 20
)

type iov struct {
	cmd, nrPages uint32
	vaddr, dstID uint64
}

func (v *iov) decode(b []byte) {
	le := binary.LittleEndian
	v.cmd, v.nrPages, v.vaddr, v.dstID = le.Uint32(b), le.Uint32(b[4:]), le.Uint64(b[8:]), le.Uint64(b[16:])
}

func (v *iov) encode(b []byte) {
	le := binary.LittleEndian
	le.PutUint32(b, v.cmd)
	le.PutUint32(b[4:], v.nrPages)
	le.PutUint64(b[8:], v.vaddr)
	le.PutUint64(b[16:], v.dstID)
}

// Serve answers CRIU's lazy-pages daemon on conn until it closes the
// session, reading pages from src. An error means the daemon asked for
// memory the checkpoint does not have, or the memory could not be read:
// the daemon then fails, and with it the restored tasks' next fault.
func Serve(conn io.ReadWriter, src *Source) error {
	var req iov
	var hdr [iovSize]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil // the daemon went without closing: its exit says why
			}
			return fmt.Errorf("page server: read request: %w", err)
		}
		req.decode(hdr[:])
		switch req.cmd & (1<<psCmdBits - 1) {
		case psIovGet:
		case psIovClose, psIovForceClose:
			_, err := conn.Write([]byte{0, 0, 0, 0})
			return err
		default:
			return fmt.Errorf("page server: unexpected command %#x", req.cmd)
		}
		var err error
		if buf, err = src.read(&req, buf); err != nil {
			return fmt.Errorf("page server: pid %d at %#x: %w", req.dstID, req.vaddr, err)
		}
		req.cmd = psIovAddF | flagPresent<<psCmdBits
		req.encode(buf)
		if _, err := conn.Write(buf); err != nil {
			return fmt.Errorf("page server: answer: %w", err)
		}
	}
}

// read fills buf (grown as needed) with an answer's room for its header,
// then the pages asked for by req, or those of them in one run; it sets
// req.nrPages to how many it has.
func (src *Source) read(req *iov, buf []byte) ([]byte, error) {
	if uint64(req.nrPages)*PageSize > maxRequest || req.nrPages == 0 {
		return buf, fmt.Errorf("%d pages asked for", req.nrPages)
	}
	if req.dstID >= 1<<32 {
		return buf, errors.New("no such process in the checkpoint")
	}
	m, ok := src.Maps[uint32(req.dstID)]
	if !ok {
		return buf, errors.New("no such process in the checkpoint")
	}
	run, ok := m.Find(req.vaddr)
	if !ok || req.vaddr%PageSize != 0 {
		return buf, errors.New("no dumped memory there")
	}
	img, ok := src.Images[m.PagesID]
	if !ok {
		return buf, fmt.Errorf("no pages image %d", m.PagesID)
	}
	n := min(uint64(req.nrPages)*PageSize, run.Vaddr+run.Length-req.vaddr)
	req.nrPages = uint32(n / PageSize)
	if cap(buf) < iovSize+int(n) {
		buf = make([]byte, iovSize+int(n))
	}
	buf = buf[:iovSize+int(n)]
	off := int64(run.Offset + req.vaddr - run.Vaddr)
	if _, err := img.ReadAt(buf[iovSize:], off); err != nil {
		return buf, err
	}
	if p, ok := img.(Prefetcher); ok {
		p.Prefetch(off + int64(n))
	}
	return buf, nil
}
