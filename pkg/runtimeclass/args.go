package runtimeclass

import (
	"fmt"
	"strings"
)

// runcGlobalsWithValue are runc's global flags that take a value; the
// wrapper must skip their values to find the subcommand.
var runcGlobalsWithValue = map[string]bool{"root": true, "log": true, "log-format": true, "criu": true, "rootless": true}

// invocation is a runc command line split the way runc parses it.
type invocation struct {
	globals []string // everything before the subcommand, as given
	command string
	args    []string // everything after it
}

func parseInvocation(argv []string) invocation {
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if !strings.HasPrefix(a, "-") {
			return invocation{globals: argv[:i], command: a, args: argv[i+1:]}
		}
		name := strings.TrimLeft(a, "-")
		if !strings.Contains(name, "=") && runcGlobalsWithValue[name] {
			i++
		}
	}
	return invocation{globals: argv}
}

// global returns the value of a global flag, or "".
func (inv invocation) global(name string) string {
	return flagValue(inv.globals, name)
}

// createFlags are what `runc create` is told by a shim or conmon.
type createFlags struct {
	bundle, pidFile, consoleSocket string
	noPivot, noNewKeyring          bool
	preserveFDs                    string
	id                             string
}

// createFlagsWithValue are `runc create`'s flags that take a value.
var createFlagsWithValue = map[string]bool{"bundle": true, "b": true, "pid-file": true, "console-socket": true, "preserve-fds": true}

func parseCreate(args []string) (createFlags, error) {
	var c createFlags
	var positional []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			positional = append(positional, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if createFlagsWithValue[name] && !hasValue {
			if i+1 >= len(args) {
				return c, fmt.Errorf("runc create: flag --%s needs a value", name)
			}
			i++
			value = args[i]
		}
		switch name {
		case "bundle", "b":
			c.bundle = value
		case "pid-file":
			c.pidFile = value
		case "console-socket":
			c.consoleSocket = value
		case "preserve-fds":
			c.preserveFDs = value
		case "no-pivot":
			c.noPivot = true
		case "no-new-keyring":
			c.noNewKeyring = true
		default:
			return c, fmt.Errorf("runc create: flag --%s is unknown to the stasis wrapper", name)
		}
	}
	if len(positional) != 1 {
		return c, fmt.Errorf("runc create: want one container ID, got %d arguments", len(positional))
	}
	c.id = positional[0]
	if c.bundle == "" {
		c.bundle = "."
	}
	return c, nil
}

func flagValue(args []string, name string) string {
	for i, a := range args {
		n, v, ok := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || n != name {
			continue
		}
		if ok {
			return v
		}
		if i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
