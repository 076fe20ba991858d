// Package demo is `stasis demo`: a slow-starting program, started cold,
// checkpointed, restored, with both times to ready side by side.
package demo

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"time"
)

// SampleCommand runs the sample program; the demo image holds the stasis
// binary itself and starts it with this argument.
const SampleCommand = "__sample"

// Sample stands in for an application that spends its start-up building
// in-memory state (a JVM warming up, a cache filling): it fills memory with
// a hash chain for --warmup, then prints "ready" and ticks. On SIGUSR1 it
// prints the digest of all its state, so a test can tell that memory came
// back byte for byte.
func Sample(args []string) int {
	fs := flag.NewFlagSet(SampleCommand, flag.ContinueOnError)
	warmup := fs.Duration("warmup", 3*time.Second, "time spent initialising memory")
	mib := fs.Int("mib", 64, "MiB of state to build")
	lock := fs.String("lock", "", "hold an exclusive flock on this file, as a database holds its lock file")
	seed := fs.String("secret-seed", "", "derive a token from this seed and hold it only in memory, as a service holds a credential")
	sock := fs.String("listen-unix", "", "listen on a unix socket at this path")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *lock != "" {
		f, err := os.Create(*lock)
		if err == nil {
			err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "lock:", err)
			return 1
		}
		defer f.Close()
	}
	var secret []byte
	if *seed != "" {
		h := sha256.Sum256([]byte(*seed))
		secret = []byte(fmt.Sprintf("tok_%x", h[:8]))
	}
	if *sock != "" {
		l, err := net.Listen("unix", *sock)
		if err != nil {
			fmt.Fprintln(os.Stderr, "listen:", err)
			return 1
		}
		defer l.Close()
	}
	start := time.Now()
	state := make([]byte, *mib<<20)
	sum := sha256.Sum256([]byte("stasis"))
	for pass := 0; pass == 0 || time.Since(start) < *warmup; pass++ {
		for off := 0; off+len(sum) <= len(state); off += len(sum) {
			sum = sha256.Sum256(sum[:])
			copy(state[off:], sum[:])
		}
	}
	fmt.Printf("ready after %s, state %x\n", time.Since(start).Round(time.Millisecond), sum[:4])
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	for i := 0; ; i++ {
		fmt.Printf("tick %d\n", i)
		os.WriteFile("/tmp/state", []byte(strconv.Itoa(i)), 0o644)
		select {
		case <-usr1:
			fmt.Printf("digest %x\n", sha256.Sum256(state))
		case <-time.After(100 * time.Millisecond):
		}
		runtime.KeepAlive(secret)
	}
}
