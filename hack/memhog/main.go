// memhog holds N MiB of memory that does not compress (random bytes) and
// ticks 50 times a second: hack/bench-scale.sh's stand-in for a process
// whose memory is its state. Usage: memhog [-fill random|pattern] MIB
// [LOG]; -fill pattern holds memory that compresses instead. It prints "ready"
// once the memory is filled, then "tick N S", each tick reading one page
// of the memory, so a process restored without its pages would stop
// ticking. With LOG, its output goes to that file (inside its own root)
// and no descriptor of the host's stays open: raw runc can then
// checkpoint it without a shim to hand its stdio over.
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"syscall"
	"time"
)

func main() {
	fill := flag.String("fill", "random", "random: bytes that do not compress; pattern: each page one repeated byte, resident but easy to compress")
	flag.Parse()
	args := flag.Args()
	mib, err := 0, error(nil)
	if len(args) > 0 {
		mib, err = strconv.Atoi(args[0])
	}
	if len(args) == 0 || err != nil || mib < 1 || (*fill != "random" && *fill != "pattern") {
		fmt.Fprintln(os.Stderr, "usage: memhog [-fill random|pattern] MIB [LOG]")
		os.Exit(2)
	}
	if len(args) > 1 {
		if err := redirect(args[1]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	mem := make([]byte, mib<<20)
	if *fill == "random" {
		rand.NewChaCha8([32]byte{1}).Read(mem)
	} else {
		for i := range mem {
			mem[i] = byte(i >> 12)
		}
	}
	fmt.Println("ready")
	var sum byte
	for n := 0; ; n++ {
		sum += mem[(n*4096)%len(mem)]
		fmt.Println("tick", n, sum)
		time.Sleep(20 * time.Millisecond)
	}
}

func redirect(log string) error {
	out, err := os.OpenFile(log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	in, err := os.Open("/dev/null")
	if err != nil {
		return err
	}
	for fd, f := range []*os.File{in, out, out} {
		if err := syscall.Dup2(int(f.Fd()), fd); err != nil {
			return err
		}
	}
	return nil
}
