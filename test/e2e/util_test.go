package e2e

import (
	"fmt"
	"strconv"
)

var fmtSscanf = fmt.Sscanf

func itoa(n int) string { return strconv.Itoa(n) }
