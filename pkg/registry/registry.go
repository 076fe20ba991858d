// Package registry talks to OCI registries with go-containerregistry:
// resolving a reference to an image whose blobs are fetched as they are
// read, and pushing an image, skipping blobs the registry already has.
package registry

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/stasis-dev/stasis/pkg/progress"
)

// ErrNotFound is a reference the registry does not have.
var ErrNotFound = errors.New("not found in the registry")

// Options are how to reach a registry.
type Options struct {
	// TLSVerify false allows plain HTTP and certificates nobody signed.
	TLSVerify bool
	// Creds is "user:password"; empty uses ~/.docker/config.json (and
	// $DOCKER_CONFIG), as docker and podman login write it.
	Creds string
	// Progress, when not nil, shows bytes moved.
	Progress io.Writer
	// Pinned, when set, is who the registry must be and what it is
	// sent (another node's stasis agent); TLSVerify, Creds and the
	// keychain are then not used.
	Pinned *Pinned `json:"pinned,omitempty"`
}

func (o Options) nameOptions() []name.Option {
	if !o.TLSVerify && o.Pinned == nil {
		return []name.Option{name.Insecure}
	}
	return nil
}

func (o Options) remoteOptions(ctx context.Context) ([]remote.Option, error) {
	opts := []remote.Option{remote.WithContext(ctx), remote.WithUserAgent("stasis")}
	if o.Pinned != nil {
		t, err := o.Pinned.transport()
		if err != nil {
			return nil, err
		}
		return append(opts, remote.WithTransport(t)), nil
	}
	basic, err := o.basicAuth()
	if err != nil {
		return nil, err
	}
	if basic != nil {
		opts = append(opts, remote.WithAuth(basic))
	} else {
		opts = append(opts, remote.WithAuthFromKeychain(authn.DefaultKeychain))
	}
	if !o.TLSVerify {
		opts = append(opts, remote.WithTransport(o.baseTransport()))
	}
	return opts, nil
}

// basicAuth is the user and password of Creds; nil without Creds (the
// keychain is asked then).
func (o Options) basicAuth() (authn.Authenticator, error) {
	if o.Creds == "" {
		return nil, nil
	}
	user, pass, ok := strings.Cut(o.Creds, ":")
	if !ok {
		return nil, errors.New("--creds wants USER:PASSWORD")
	}
	return &authn.Basic{Username: user, Password: pass}, nil
}

// baseTransport is the HTTP transport under authentication: remote's
// default, which checks certificates unless TLSVerify is false.
func (o Options) baseTransport() http.RoundTripper {
	if o.TLSVerify {
		return remote.DefaultTransport
	}
	t := remote.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the user asked: --tls-verify=false
	return t
}

// ParseReference parses an image reference as the registry flags allow.
func ParseReference(ref string, o Options) (name.Reference, error) {
	r, err := name.ParseReference(ref, o.nameOptions()...)
	if err != nil {
		return nil, fmt.Errorf("%q is not an image reference: %w", ref, err)
	}
	return r, nil
}

// Image resolves ref in its registry. Blobs are fetched, and checked
// against their digests, only as the caller reads them.
func Image(ctx context.Context, ref string, o Options) (v1.Image, error) {
	r, err := ParseReference(ref, o)
	if err != nil {
		return nil, err
	}
	opts, err := o.remoteOptions(ctx)
	if err != nil {
		return nil, err
	}
	img, err := remote.Image(r, opts...)
	if err != nil {
		return nil, explain("pull", ref, err)
	}
	return img, nil
}

// Push writes an image (a v1.Image or a v1.ImageIndex) to ref.
func Push(ctx context.Context, ref string, img remote.Taggable, o Options) error {
	r, err := ParseReference(ref, o)
	if err != nil {
		return err
	}
	opts, err := o.remoteOptions(ctx)
	if err != nil {
		return err
	}
	var done chan struct{}
	if o.Progress != nil {
		updates := make(chan v1.Update, 16)
		done = make(chan struct{})
		m := progress.New(o.Progress, "push "+ref, 0)
		go func() {
			defer close(done)
			for u := range updates {
				m.Set(u.Complete, u.Total)
			}
			m.Done()
		}()
		opts = append(opts, remote.WithProgress(updates))
	}
	switch x := img.(type) {
	case v1.ImageIndex:
		err = remote.WriteIndex(r, x, opts...)
	case v1.Image:
		err = remote.Write(r, x, opts...)
	default:
		err = fmt.Errorf("cannot push a %T", img)
	}
	if done != nil {
		<-done
	}
	if err != nil {
		return explain("push", ref, err)
	}
	return nil
}

// explain turns registry errors into what the user can act on.
func explain(op, ref string, err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch {
		case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden:
			return fmt.Errorf("%s %s: the registry refused the credentials (%d): give --creds USER:PASSWORD or log in: %w", op, ref, te.StatusCode, err)
		case te.StatusCode == http.StatusNotFound:
			return fmt.Errorf("%s %s: %w: %w", op, ref, ErrNotFound, err)
		case te.StatusCode >= 500:
			return fmt.Errorf("%s %s: the registry failed (%d); nothing was changed here: %w", op, ref, te.StatusCode, err)
		}
	}
	return fmt.Errorf("%s %s: %w", op, ref, err)
}
