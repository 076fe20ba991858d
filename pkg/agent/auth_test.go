package agent

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTokensFileIsChecked(t *testing.T) {
	for body, want := range map[string]string{
		`{"short": {"user": "a", "role": "admin"}}`:           "shorter than 16",
		`{"0123456789abcdef": {"user": "a", "role": "root"}}`: `role "root"`,
		`not json`: "invalid character",
		`{"0123456789abcdef": {"user": "a", "role": "viewer"}}`: "",
	} {
		p := filepath.Join(t.TempDir(), "tokens.json")
		os.WriteFile(p, []byte(body), 0o600)
		_, err := NewCertOrToken(p)
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
}

func TestTokenAuthenticationAndRoles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tokens.json")
	os.WriteFile(p, []byte(`{"viewer-0123456789": {"user": "v", "role": "viewer"}}`), 0o600)
	a, err := NewCertOrToken(p)
	if err != nil {
		t.Fatal(err)
	}
	req := func(h string) *http.Request {
		r, _ := http.NewRequest("GET", "/", nil)
		if h != "" {
			r.Header.Set("Authorization", h)
		}
		return r
	}
	if id, err := a.Authenticate(req("Bearer viewer-0123456789")); err != nil || id.User != "v" || id.Role != Viewer {
		t.Fatalf("known token: %+v %v", id, err)
	}
	if _, err := a.Authenticate(req("Bearer viewer-012345678X")); err == nil {
		t.Fatal("an unknown token was accepted")
	}
	if _, err := a.Authenticate(req("Basic dTpw")); err == nil {
		t.Fatal("basic auth was accepted")
	}
	if id, err := a.Authenticate(req("")); id != nil || err != nil {
		t.Fatalf("no credentials: %+v %v", id, err)
	}
	if !Admin.allows(Viewer) || !Viewer.allows(Viewer) || Viewer.allows(Admin) || Role("").allows(Viewer) {
		t.Fatal("roles allow the wrong things")
	}
}
