package rootfs

import (
	"os"
	"path/filepath"
	"testing"
)

func TestOverlayAtReadsTheLayers(t *testing.T) {
	mi := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(mi, []byte(`22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:50 / /run/c/rootfs rw,relatime - overlay overlay rw,lowerdir=/s/2/fs:/s/1/fs,upperdir=/s/3/fs,workdir=/s/3/work
91 22 0:51 / /run/d/rootfs rw,relatime - overlay overlay rw,lowerdir+=/s/5/fs,lowerdir+=/s/4/fs,upperdir=/s/6/fs,workdir=/s/6/work
92 22 0:52 / /run/with\040space rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
93 22 0:53 / /run/ro rw - overlay overlay ro,lowerdir=/l
94 22 0:54 / /run/tmp rw - tmpfs tmpfs rw
`), 0o600)
	for dir, want := range map[string]Layout{
		"/run/c/rootfs":   {Lower: "/s/2/fs:/s/1/fs", Upper: "/s/3/fs", Work: "/s/3/work", Merged: "/run/c/rootfs"},
		"/run/d/rootfs":   {Lower: "/s/5/fs:/s/4/fs", Upper: "/s/6/fs", Work: "/s/6/work", Merged: "/run/d/rootfs"},
		"/run/with space": {Lower: "/l", Upper: "/u", Work: "/w", Merged: "/run/with space"},
	} {
		got, err := OverlayAt(dir, mi)
		if err != nil || got != want {
			t.Errorf("%s: %+v %v, want %+v", dir, got, err, want)
		}
	}
	for _, dir := range []string{"/run/ro", "/run/tmp", "/nowhere"} {
		if _, err := OverlayAt(dir, mi); err == nil {
			t.Errorf("%s: no writable overlay there, yet no error", dir)
		}
	}
}
