package kubenode

import (
	"errors"
	"fmt"
	"os/exec"
	"strconv"
)

// Cut makes nodes a and b unreachable from each other, both ways (a
// blackhole route to the other in each node's network namespace), as a
// link between two nodes that fails; each still reaches the control
// plane. heal undoes it.
func (c *Cluster) Cut(a, b string) (heal func() error, err error) {
	na, nb := c.Node(a), c.Node(b)
	if na == nil || nb == nil {
		return nil, fmt.Errorf("cut %s from %s: no such node", a, b)
	}
	route := func(verb string, from, to *Member) error {
		out, err := exec.Command("nsenter", "-t", strconv.Itoa(from.Pid()), "-n",
			"ip", "route", verb, "blackhole", to.IP+"/32").CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip route %s blackhole %s on %s: %v: %s", verb, to.IP, from.Name, err, out)
		}
		return nil
	}
	heal = func() error { return errors.Join(route("del", na, nb), route("del", nb, na)) }
	if err := route("add", na, nb); err != nil {
		return nil, err
	}
	if err := route("add", nb, na); err != nil {
		route("del", na, nb)
		return nil, err
	}
	return heal, nil
}
