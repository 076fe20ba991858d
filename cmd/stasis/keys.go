package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/stasis-dev/stasis/pkg/provenance"
)

func keyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Manage checkpoint signing keys"}
	cmd.AddCommand(&cobra.Command{
		Use:   "generate PREFIX",
		Short: "Make a checkpoint signing key pair: PREFIX.key (private, 0600) and PREFIX.pub",
		Long: `Generate makes an ECDSA P-256 key pair, cosign's kind: PREFIX.key, the private
key (PKCS#8 PEM, unencrypted: keep it in a Kubernetes Secret, which is its
protection), and PREFIX.pub, the public key that nodes trust and that
'cosign verify --key' takes. Existing files are not overwritten.`,
		Example: `  stasis key generate cluster
  kubectl -n stasis-system create secret generic stasis-checkpoint-key \
      --from-file=cosign.key=cluster.key --from-file=cosign.pub=cluster.pub`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			priv, pub, err := provenance.GenerateKey()
			if err != nil {
				return err
			}
			keyFile, pubFile := args[0]+".key", args[0]+".pub"
			for _, f := range []string{keyFile, pubFile} {
				_, err := os.Lstat(f)
				if err == nil {
					return fmt.Errorf("key generate: %s exists: not overwritten", f)
				}
				if !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("key generate: %w", err)
				}
			}
			if err := writeNew(keyFile, priv, 0o600); err != nil {
				return err
			}
			if err := writeNew(pubFile, pub, 0o644); err != nil {
				os.Remove(keyFile)
				return err
			}
			fmt.Println(pubFile)
			return nil
		},
	})
	return cmd
}

// writeNew writes a file that must not exist yet.
func writeNew(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("key generate: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("key generate: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("key generate: %w", err)
	}
	return nil
}

func imageSignCmd(g *globals) *cobra.Command {
	var keyFile string
	var c provenance.Claims
	cmd := &cobra.Command{
		Use:   "sign IMAGE",
		Short: "Sign a stored checkpoint image (cosign's format); 'stasis push' carries the signature",
		Long: `Sign signs a checkpoint image in the local store with a private key (PEM), as
cosign does: a signature image tagged sha256-<manifest digest>.sig beside it,
which 'stasis push IMAGE' sends along. The signature binds the manifest
digest (and so the archive) and claims what the flags say; the archive's
digest and the time are always claimed.

Nodes whose agent trusts the key restore the image; this is how a checkpoint
made by Podman or CRI-O (or by another cluster) is admitted on purpose: sign
it with a key the nodes list with --trusted-key. With --namespace the image
is admitted only in that namespace; without it, in any.`,
		Example: `  stasis image build podman-ckpt.tar.gz registry.example.com/ckpt/web:v1
  stasis image sign registry.example.com/ckpt/web:v1 --key admin.key --namespace shop
  stasis push registry.example.com/ckpt/web:v1`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if keyFile == "" {
				return fmt.Errorf("image sign: give --key FILE")
			}
			e, err := g.engine()
			if err != nil {
				return err
			}
			signer, err := provenance.LoadSigner(keyFile)
			if err != nil {
				return err
			}
			c.Time = time.Now()
			return e.SignImage(args[0], signer, c)
		},
	}
	f := cmd.Flags()
	f.StringVar(&keyFile, "key", "", "private key to sign with (PEM, unencrypted; 'stasis key generate' makes one)")
	f.StringVar(&c.Namespace, "namespace", "", "the Kubernetes namespace the checkpoint may be restored in (claimed)")
	f.StringVar(&c.Cluster, "cluster", "", "the cluster it was made in (claimed)")
	f.StringVar(&c.Pod, "pod", "", "the pod it was made of (claimed)")
	f.StringVar(&c.Container, "container", "", "the container it was made of (claimed)")
	f.StringVar(&c.Node, "node", "", "the node it was made on (claimed)")
	return cmd
}
