package inspect

import (
	"fmt"
	"regexp"
	"strconv"
)

// MemoryMatch is a find in a process's memory.
type MemoryMatch struct {
	Pid     uint32 `json:"pid"`
	Address string `json:"address"` // hex, as in /proc/PID/maps
	Length  int    `json:"length"`
	// Mapping is the area holding the address: a file, [heap], [stack], or
	// anon.
	Mapping string `json:"mapping"`
	// Context is the match with up to --context bytes either side,
	// non-printable bytes shown as '?'.
	Context string `json:"context"`
}

// searchChunk is how much memory is read at a time: the search holds
// about this much, however large the checkpoint.
const searchChunk = 4 << 20

// SearchMemory looks for pattern (a literal, or a regular expression with
// isRegex) in the dumped memory of pid. It holds one chunk (a few MiB) of
// memory at a time, whatever the size of the checkpoint.
func (c *Checkpoint) SearchMemory(pid uint32, pattern string, isRegex bool, context int) ([]MemoryMatch, error) {
	expr := regexp.QuoteMeta(pattern)
	if isRegex {
		expr = pattern
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, fmt.Errorf("--search-regex %q does not compile: %w", pattern, err)
	}
	if context < 0 {
		return nil, fmt.Errorf("--context must not be negative")
	}
	if _, err := c.Processes(ProcessOptions{Pid: pid}); err != nil {
		return nil, err
	}
	ix, err := c.pageIndex(pid)
	if err != nil {
		return nil, err
	}
	areas, err := c.areas(pid)
	if err != nil {
		return nil, err
	}
	out := []MemoryMatch{}
	err = ix.search(re, context, func(vaddr uint64, n int, around []byte) {
		out = append(out, MemoryMatch{
			Pid: pid, Address: fmt.Sprintf("%x", vaddr), Length: n,
			Mapping: areas.at(vaddr), Context: printable(around),
		})
	})
	if err != nil {
		return nil, fmt.Errorf("search memory of pid %d: %w", pid, err)
	}
	return out, nil
}

// printable shows bytes as text, non-printable ones as '.'.
func printable(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		if c < 32 || c >= 127 {
			c = '.'
		}
		out[i] = c
	}
	return string(out)
}

type area struct {
	start, end uint64
	name       string
}

type areaList []area

func (l areaList) at(addr uint64) string {
	for _, a := range l {
		if addr >= a.start && addr < a.end {
			return a.name
		}
	}
	return "unmapped"
}

// areas are the memory mappings of pid, from its mm image.
func (c *Checkpoint) areas(pid uint32) (areaList, error) {
	if err := c.check("pstree.img", "mm-*.img", "files.img"); err != nil {
		return nil, err
	}
	mems, err := decode("memory map", c.critter().ExploreMems)
	if err != nil {
		return nil, fmt.Errorf("memory map: %w", err)
	}
	var out areaList
	for _, mm := range mems {
		if mm.PId != pid {
			continue
		}
		for _, m := range mm.Mems {
			start, err1 := strconv.ParseUint(m.Start, 16, 64)
			end, err2 := strconv.ParseUint(m.End, 16, 64)
			if err1 != nil || err2 != nil {
				continue
			}
			name := m.Resource
			if name == "" {
				name = "anon"
			}
			out = append(out, area{start, end, name})
		}
	}
	return out, nil
}
