package image

import (
	"fmt"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The store read as a registry reads its repositories: what the agent's
// /v2/ API serves to the agents of other nodes. A reader names a
// repository and gets only what that repository's images hold.

// Manifest is the manifest of the image that ref (a tag or a digest)
// names in repository repo: its bytes, media type and digest.
func (s *Store) Manifest(repo, ref string) ([]byte, types.MediaType, v1.Hash, error) {
	unlock, err := s.rlock()
	if err != nil {
		return nil, "", v1.Hash{}, err
	}
	defer unlock()
	imgs, err := s.inRepository(repo)
	if err != nil {
		return nil, "", v1.Hash{}, err
	}
	for _, i := range imgs {
		if i.Digest != ref && i.Name != repo+":"+ref {
			continue
		}
		img, err := s.image(i)
		if err != nil {
			return nil, "", v1.Hash{}, err
		}
		raw, err := img.RawManifest()
		if err != nil {
			return nil, "", v1.Hash{}, err
		}
		mt, err := img.MediaType()
		if err != nil {
			return nil, "", v1.Hash{}, err
		}
		h, err := v1.NewHash(i.Digest)
		return raw, mt, h, err
	}
	return nil, "", v1.Hash{}, fmt.Errorf("%w: %s in %s", ErrNotFound, ref, repo)
}

// OpenBlob opens blob h when an image of repository repo has it as its
// config or a layer.
func (s *Store) OpenBlob(repo string, h v1.Hash) (*os.File, error) {
	unlock, err := s.rlock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	imgs, err := s.inRepository(repo)
	if err != nil {
		return nil, err
	}
	for _, i := range imgs {
		img, err := s.image(i)
		if err != nil {
			return nil, err
		}
		m, err := img.Manifest()
		if err != nil {
			return nil, err
		}
		if m.Config.Digest == h {
			return os.Open(s.blobPath(h))
		}
		for _, l := range m.Layers {
			if l.Digest == h {
				return os.Open(s.blobPath(h))
			}
		}
	}
	return nil, fmt.Errorf("%w: blob %s in %s", ErrNotFound, h, repo)
}

// inRepository lists the images whose name is in repository repo.
func (s *Store) inRepository(repo string) ([]*Image, error) {
	all, err := s.list()
	if err != nil {
		return nil, err
	}
	var out []*Image
	for _, i := range all {
		if Repository(i.Name) == repo && !strings.Contains(i.Name, "@") {
			out = append(out, i)
		}
	}
	return out, nil
}
