package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// SIGTERM (or ^C) while CRIU dumps stops the checkpoint: the command
// exits with an error, the container runs on (not frozen), no archive
// appears and no work files stay. Both with --leave-running and without,
// where the dump would otherwise have stopped the container.
func TestCheckpointStopsOnSIGTERM(t *testing.T) {
	e := newEnv(t)
	e.runBig("big")
	interrupted := 0
	for _, leave := range []bool{true, false} {
		export := filepath.Join(t.TempDir(), "big.tar.zst")
		args := []string{"checkpoint", "big", "--export", export}
		if leave {
			args = append(args, "--leave-running")
		}
		cmd := e.cmd(args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitCRIU(t)
		cmd.Process.Signal(syscall.SIGTERM)
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case err := <-exited:
			if err == nil {
				// The dump beat the signal: nothing to check this round.
				t.Logf("leave-running=%v: the checkpoint finished before SIGTERM landed", leave)
				if _, err := os.Stat(export); err != nil {
					t.Fatalf("a checkpoint that succeeded left no archive: %v", err)
				}
				if !leave {
					e.run("restore", "big")
					waitLogLine(t, e, "big", fmt.Sprintf("tick %d", lastTick(t, e, "big")+1))
				}
				continue
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("leave-running=%v: checkpoint still running 20 s after SIGTERM", leave)
		}
		interrupted++
		if _, err := os.Stat(export); !os.IsNotExist(err) {
			t.Errorf("leave-running=%v: an interrupted checkpoint left %s (%v)", leave, export, err)
		}
		checkRecovered(t, e, "after SIGTERM to the checkpoint")
	}
	if interrupted == 0 {
		t.Fatal("both dumps of 300 MiB finished before SIGTERM landed: nothing was interrupted, so nothing was tested")
	}
}
