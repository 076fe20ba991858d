package provenance

import (
	"crypto"
	"crypto/elliptic"
	"encoding/pem"
	"fmt"
	"os"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// GenerateKey makes a checkpoint key: ECDSA P-256 (cosign's), the private
// half PKCS#8 "PRIVATE KEY" PEM, unencrypted: the key lives in a
// Kubernetes Secret mounted into the agent, and that Secret is its
// protection (a passphrase would have to sit beside it). cosign reads
// such a key with `cosign import-key-pair`; its public half as it is.
func GenerateKey() (privPEM, pubPEM []byte, err error) {
	privPEM, pubPEM, err = cryptoutils.GeneratePEMEncodedECDSAKeyPair(elliptic.P256(), nil)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	return privPEM, pubPEM, nil
}

// LoadSigner reads a private key (PEM: PKCS#8, SEC 1 or PKCS#1) that signs
// with SHA-256.
func LoadSigner(file string) (signature.Signer, error) {
	priv, err := readPrivateKey(file)
	if err != nil {
		return nil, err
	}
	s, err := signature.LoadSignerVerifier(priv, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", file, err)
	}
	return s, nil
}

func readPrivateKey(file string) (crypto.PrivateKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if blk, _ := pem.Decode(b); blk != nil && blk.Type == string(cryptoutils.EncryptedSigstorePrivateKeyPEMType) {
		return nil, fmt.Errorf("signing key %s is encrypted (cosign's format): give an unencrypted PKCS#8 key, such as 'stasis key generate' makes", file)
	}
	priv, err := cryptoutils.UnmarshalPEMToPrivateKey(b, nil)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", file, err)
	}
	return priv, nil
}

// loadVerifier reads a public key, or the public half of a private key
// (PEM), that verifies with SHA-256.
func loadVerifier(file string) (signature.Verifier, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("trusted key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("trusted key %s: no PEM block", file)
	}
	var pub crypto.PublicKey
	if blk.Type == string(cryptoutils.PublicKeyPEMType) {
		if pub, err = cryptoutils.UnmarshalPEMToPublicKey(b); err != nil {
			return nil, fmt.Errorf("trusted key %s: %w", file, err)
		}
	} else {
		priv, err := readPrivateKey(file)
		if err != nil {
			return nil, err
		}
		signer, ok := priv.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("trusted key %s: unsupported key type %T", file, priv)
		}
		pub = signer.Public()
	}
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("trusted key %s: %w", file, err)
	}
	return v, nil
}
