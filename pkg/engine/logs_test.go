package engine

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTailOffset(t *testing.T) {
	for _, c := range []struct {
		text string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc\n"},
		{"a\nb\nc", 1, "c"},
		{"a\nb\nc", 2, "b\nc"},
		{"a\nb\nc\n", 10, "a\nb\nc\n"},
		{"", 3, ""},
		{"\n\n\n", 2, "\n\n"},
		{strings.Repeat("0123456789\n", 20000) + "x\ny\n", 3, "0123456789\nx\ny\n"}, // across the 64 KiB reads
	} {
		p := filepath.Join(t.TempDir(), "log")
		os.WriteFile(p, []byte(c.text), 0o600)
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		off, err := tailOffset(f, c.n)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := c.text[off:]; got != c.want {
			t.Errorf("last %d lines of %.40q: %.40q, want %.40q", c.n, c.text, got, c.want)
		}
	}
}
