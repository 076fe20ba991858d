package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/stasis-dev/stasis/pkg/policy"
)

func (o *options) drainCmd() *cobra.Command {
	var d drain
	cmd := &cobra.Command{
		Use:   "drain NODE",
		Short: "Cordon a node, migrate its pods with their memory, evict the rest",
		Long: `drain empties a node as kubectl drain does, except that the pods that can
move with their memory do: the node is cordoned, then every pod on it that
may migrate (running, not marked stasis.dev/migrate=never, without an owner
or owned by a ReplicaSet or a StatefulSet) gets a Migration to another node,
one after the other, and the others are evicted (the Eviction API: their
PodDisruptionBudgets apply).

DaemonSet pods and static (mirror) pods are left where they are. A pod
without an owner that cannot migrate would be gone for good once evicted:
drain refuses it unless --force is given. drain fails if any pod could not
be moved or evicted; the node stays cordoned (kubectl uncordon NODE).

It needs what kubectl drain needs (patch nodes, list pods, create
pods/eviction) and stasis-admin's right to create Migrations.`,
		Example: `  kubectl stasis drain node-a
  kubectl stasis drain node-a --to node-b --lazy-pages`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := o.client()
			if err != nil {
				return err
			}
			d.c, d.out, d.node = c, o.out, args[0]
			return d.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&d.to, "to", "", "the node the pods migrate to (default: for each, the first Ready node other than theirs, by name)")
	f.BoolVar(&d.lazy, "lazy-pages", false, "migrate with lazy pages (see kubectl stasis migrate --help)")
	f.BoolVar(&d.force, "force", false, "evict pods without an owner that cannot migrate (they are not recreated)")
	f.DurationVar(&d.timeout, "timeout", 10*time.Minute, "how long to wait for each migration and for the evicted pods to be gone")
	return cmd
}

// drain is one `kubectl stasis drain`.
type drain struct {
	c       client.Client
	out     io.Writer
	node    string
	to      string
	lazy    bool
	force   bool
	timeout time.Duration
}

func (d *drain) run(ctx context.Context) error {
	if err := d.cordon(ctx); err != nil {
		return err
	}
	var pods corev1.PodList
	if err := d.c.List(ctx, &pods, client.MatchingFields{"spec.nodeName": d.node}); err != nil {
		return fmt.Errorf("pods on node %s: %w", d.node, err)
	}
	var move, evict []*corev1.Pod
	var errs []error
	for i := range pods.Items {
		p := &pods.Items[i]
		switch how, why := classify(p); how {
		case leave:
			fmt.Fprintf(d.out, "pod/%s -n %s: left (%s)\n", p.Name, p.Namespace, why)
		case migrate:
			move = append(move, p)
		case evictIt:
			if metav1.GetControllerOf(p) == nil && !d.force {
				errs = append(errs, fmt.Errorf("pod %s/%s cannot migrate (%s) and has no owner to recreate it: evict it with --force", p.Namespace, p.Name, why))
				continue
			}
			fmt.Fprintf(d.out, "pod/%s -n %s: evicting (%s)\n", p.Name, p.Namespace, why)
			evict = append(evict, p)
		}
	}
	for _, p := range evict {
		if err := d.evict(ctx, p); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range move {
		if err := d.migrate(ctx, p); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range evict {
		if err := d.waitGone(ctx, p); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("node %s is cordoned but not drained:\n%w", d.node, err)
	}
	fmt.Fprintf(d.out, "node/%s drained\n", d.node)
	return nil
}

func (d *drain) cordon(ctx context.Context) error {
	var n corev1.Node
	if err := d.c.Get(ctx, client.ObjectKey{Name: d.node}, &n); err != nil {
		return err
	}
	if !n.Spec.Unschedulable {
		before := n.DeepCopy()
		n.Spec.Unschedulable = true
		if err := d.c.Patch(ctx, &n, client.MergeFrom(before)); err != nil {
			return fmt.Errorf("cordon node %s: %w", d.node, err)
		}
	}
	fmt.Fprintf(d.out, "node/%s cordoned\n", d.node)
	return nil
}

type disposal int

const (
	leave disposal = iota
	migrate
	evictIt
)

// classify says what drain does with a pod, and why.
func classify(p *corev1.Pod) (disposal, string) {
	owner := metav1.GetControllerOf(p)
	switch {
	case p.Annotations[corev1.MirrorPodAnnotationKey] != "":
		return leave, "a static pod"
	case owner != nil && owner.Kind == "DaemonSet":
		return leave, "a DaemonSet's"
	case p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed:
		return leave, "ended or ending"
	case p.Status.Phase != corev1.PodRunning:
		return evictIt, "not running"
	}
	if err := policy.MayCheckpoint("pod "+p.Namespace+"/"+p.Name, p.Annotations, true); err != nil {
		return evictIt, "marked never to migrate"
	}
	if owner != nil && owner.Kind != "ReplicaSet" && owner.Kind != "StatefulSet" {
		return evictIt, "a " + owner.Kind + "'s pod, which does not migrate"
	}
	return migrate, ""
}

// migrate moves one pod with a Migration and waits until it ends.
func (d *drain) migrate(ctx context.Context, p *corev1.Pod) error {
	m := newMigration(p.Namespace, p.Name, d.to, d.lazy)
	m.GenerateName = p.Name + "-drain-"
	if err := d.c.Create(ctx, m); err != nil {
		return fmt.Errorf("migrate pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	fmt.Fprintf(d.out, "pod/%s -n %s: migrating (migration.stasis.dev/%s)\n", p.Name, p.Namespace, m.Name)
	if err := waitMigration(ctx, d.c, m, d.timeout); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "pod/%s -n %s: migrated to node %s as %s (down %dms)\n", p.Name, p.Namespace,
		m.Status.TargetNode, m.Status.TargetPod, m.Status.DowntimeMillis)
	return nil
}

func (d *drain) evict(ctx context.Context, p *corev1.Pod) error {
	ev := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name}}
	if err := d.c.SubResource("eviction").Create(ctx, p, ev); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("evict pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// waitGone waits until the evicted pod (that one, by UID) is gone.
func (d *drain) waitGone(ctx context.Context, p *corev1.Pod) error {
	err := wait.PollUntilContextTimeout(ctx, pollEvery, d.timeout, true, func(ctx context.Context) (bool, error) {
		var now corev1.Pod
		err := d.c.Get(ctx, client.ObjectKeyFromObject(p), &now)
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return err == nil && now.UID != p.UID, err
	})
	if err != nil {
		return fmt.Errorf("evicted pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	fmt.Fprintf(d.out, "pod/%s -n %s: evicted\n", p.Name, p.Namespace)
	return nil
}
