package archive

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"filippo.io/age"
)

// ageMagic starts every age file; an encrypted archive is an age file
// holding the (compressed) tar.
var ageMagic = []byte("age-encryption.org/v1\n")

// ErrEncrypted is returned when an archive is encrypted and no identity
// given can open it.
var ErrEncrypted = errors.New("archive is encrypted")

// ParseRecipients reads age recipients: "age1..." keys, or files of them
// (one per line, # comments), as age's -r and -R take them.
func ParseRecipients(keysOrFiles []string) ([]age.Recipient, error) {
	var out []age.Recipient
	for _, k := range keysOrFiles {
		if strings.HasPrefix(k, "age1") {
			r, err := age.ParseX25519Recipient(k)
			if err != nil {
				return nil, fmt.Errorf("recipient %q: %w", k, err)
			}
			out = append(out, r)
			continue
		}
		f, err := os.Open(k)
		if err != nil {
			return nil, fmt.Errorf("recipients: %w", err)
		}
		rs, err := age.ParseRecipients(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("recipients %s: %w", k, err)
		}
		out = append(out, rs...)
	}
	return out, nil
}

// ReadIdentities reads age identity files ("AGE-SECRET-KEY-1..." lines).
func ReadIdentities(files []string) ([]age.Identity, error) {
	var out []age.Identity
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("identity: %w", err)
		}
		ids, err := age.ParseIdentities(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("identity %s: %w", p, err)
		}
		out = append(out, ids...)
	}
	return out, nil
}

// decrypter opens an age-encrypted stream when r is one; other streams
// pass through.
func decrypter(r io.Reader, ids []age.Identity) (io.Reader, bool, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(len(ageMagic))
	if err != nil && err != io.EOF {
		return nil, false, err
	}
	if !bytes.Equal(head, ageMagic) {
		return br, false, nil
	}
	if len(ids) == 0 {
		return nil, true, fmt.Errorf("%w: give the identity (age key) it was encrypted to", ErrEncrypted)
	}
	dr, err := age.Decrypt(br, ids...)
	if err != nil {
		return nil, true, fmt.Errorf("%w and the identities given cannot open it: %v", ErrEncrypted, err)
	}
	return dr, true, nil
}
