// Package plugin is the kubectl plugin (kubectl stasis ...): a thin front
// for the stasis.dev API. It creates Checkpoints, Restores and Migrations,
// waits for them, and lists and describes them; the controller does the
// work.
package plugin

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
)

type options struct {
	flags     clientcmd.ClientConfig
	namespace string
	out       io.Writer
}

// New returns the plugin's root command.
func New(out io.Writer) *cobra.Command {
	o := &options{out: out}
	root := &cobra.Command{
		Use:   "kubectl-stasis",
		Short: "Checkpoint and restore pods with stasis",
		Long: `kubectl stasis creates stasis.dev Checkpoints, Restores and Migrations and
follows them.
Only cluster administrators (bound to the ClusterRole stasis-admin) may.`,
		SilenceUsage: true,
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	overrides := &clientcmd.ConfigOverrides{}
	root.PersistentFlags().StringVar(&rules.ExplicitPath, "kubeconfig", "", "kubeconfig file")
	root.PersistentFlags().StringVarP(&overrides.Context.Namespace, "namespace", "n", "", "namespace (default: the context's)")
	root.PersistentFlags().StringVar(&overrides.CurrentContext, "context", "", "kubeconfig context")
	o.flags = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	root.AddCommand(o.checkpointCmd(), o.restoreCmd(), o.migrateCmd(), o.drainCmd(), o.listCmd(), o.inspectCmd())
	return root
}

func (o *options) client() (client.Client, string, error) {
	cfg, err := o.flags.ClientConfig()
	if err != nil {
		return nil, "", err
	}
	ns, _, err := o.flags.Namespace()
	if err != nil {
		return nil, "", err
	}
	scheme := runtime.NewScheme()
	if err := stasisv1.AddToScheme(scheme); err != nil {
		return nil, "", err
	}
	// Pods, nodes and evictions, for drain.
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, "", err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	return c, ns, err
}

func (o *options) checkpointCmd() *cobra.Command {
	var name, repository string
	var containers []string
	var insecure, wait bool
	cmd := &cobra.Command{
		Use:   "checkpoint pod/NAME",
		Short: "Checkpoint a pod's containers (all frozen at one moment)",
		Example: `  kubectl stasis checkpoint pod/web -n shop
  kubectl stasis checkpoint pod/web -n shop --image registry.local/ckpt/web`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pod, err := podArg(args[0])
			if err != nil {
				return err
			}
			c, ns, err := o.client()
			if err != nil {
				return err
			}
			ck := &stasisv1.Checkpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec: stasisv1.CheckpointSpec{PodName: pod, Containers: containers}}
			if name == "" {
				ck.GenerateName = pod + "-"
			}
			if repository != "" {
				ck.Spec.Destination.Image = &stasisv1.ImageDestination{Repository: repository, Insecure: insecure}
			}
			if err := c.Create(cmd.Context(), ck); err != nil {
				return err
			}
			fmt.Fprintf(o.out, "checkpoint.stasis.dev/%s created\n", ck.Name)
			if !wait {
				return nil
			}
			return o.waitCheckpoint(cmd.Context(), c, ck)
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "the Checkpoint's name (default: the pod's name and a suffix)")
	f.StringSliceVarP(&containers, "container", "c", nil, "only these containers (default: all)")
	f.StringVar(&repository, "image", "", "push the checkpoint images to this repository (default: keep them on the node)")
	f.BoolVar(&insecure, "insecure", false, "the registry is plain HTTP or its certificate unverified")
	f.BoolVar(&wait, "wait", true, "wait until it succeeds or fails")
	return cmd
}

// podArg is the pod's name in "pod/NAME".
func podArg(arg string) (string, error) {
	pod, ok := strings.CutPrefix(arg, "pod/")
	if !ok {
		pod, ok = strings.CutPrefix(arg, "pods/")
	}
	if !ok || pod == "" {
		return "", fmt.Errorf("name the pod as pod/NAME, not %q", arg)
	}
	return pod, nil
}

func (o *options) migrateCmd() *cobra.Command {
	var name, to string
	var wait, lazy bool
	cmd := &cobra.Command{
		Use:   "migrate pod/NAME [--to NODE]",
		Short: "Move a running pod to another node with its memory (a Migration)",
		Long: `migrate creates a Migration: the pod is frozen and checkpointed, deleted,
and restored under its own name on the target node, whose agent fetches the
checkpoint from the source node's. If the restore fails, the pod is restored
on its source node again.

A Deployment's pod (one a ReplicaSet owns) is restored beside its frozen
source under a new name and joins the ReplicaSet once Ready; if that fails,
the source is resumed. With --lazy-pages the target runs before the memory
has arrived, its pages read from the source node on demand.

A StatefulSet's pod keeps its name and identity: the name is held for its
copy while it moves, and the StatefulSet adopts the copy.

Refused: pods annotated stasis.dev/migrate=never, pods of other owners
(Jobs, DaemonSets), and pods whose persistent volumes the target node
cannot mount.`,
		Example: `  kubectl stasis migrate pod/web -n shop --to node-b`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pod, err := podArg(args[0])
			if err != nil {
				return err
			}
			c, ns, err := o.client()
			if err != nil {
				return err
			}
			m := newMigration(ns, pod, to, lazy)
			if name != "" {
				m.Name, m.GenerateName = name, ""
			}
			if err := c.Create(cmd.Context(), m); err != nil {
				return err
			}
			fmt.Fprintf(o.out, "migration.stasis.dev/%s created\n", m.Name)
			if !wait {
				return nil
			}
			if err := waitMigration(cmd.Context(), c, m, 0); err != nil {
				return err
			}
			fmt.Fprintf(o.out, "pod/%s runs on node %s (was on %s): down %dms, %d bytes moved\n", pod,
				m.Status.TargetNode, m.Status.SourceNode, m.Status.DowntimeMillis, m.Status.BytesMoved)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "the Migration's name (default: the pod's name and a suffix)")
	f.StringVar(&to, "to", "", "the target node (default: the first Ready node other than the pod's, by name)")
	f.BoolVar(&lazy, "lazy-pages", false, "start on the target before the memory has arrived, reading it from the source node's store as it is touched")
	f.BoolVar(&wait, "wait", true, "wait until it succeeds or fails")
	return cmd
}

func (o *options) waitCheckpoint(ctx context.Context, c client.Client, ck *stasisv1.Checkpoint) error {
	if err := waitFor(ctx, c, ck, 0, func() bool { return ck.Status.Phase.Done() }); err != nil {
		return err
	}
	if ck.Status.Phase == stasisv1.PhaseFailed {
		return fmt.Errorf("checkpoint %s failed: %s: %s", ck.Name, ck.Status.Reason, ck.Status.Message)
	}
	for _, ct := range ck.Status.Containers {
		fmt.Fprintf(o.out, "%s: %s (%s, %d bytes)\n", ct.Name, ct.Image, ct.Digest, ct.Size)
	}
	return nil
}

// newMigration is a Migration of pod to node to (any node: ""), named
// after the pod.
func newMigration(ns, pod, to string, lazy bool) *stasisv1.Migration {
	return &stasisv1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: pod + "-"},
		Spec: stasisv1.MigrationSpec{PodName: pod, TargetNode: to, Mode: stasisv1.MigrationOffline, LazyPages: lazy}}
}

// waitMigration waits until m ends (within timeout; 0: no bound but
// ctx's), and says why if it failed.
func waitMigration(ctx context.Context, c client.Client, m *stasisv1.Migration, timeout time.Duration) error {
	if err := waitFor(ctx, c, m, timeout, func() bool { return m.Status.Phase.Done() }); err != nil {
		return fmt.Errorf("migration %s/%s: %w", m.Namespace, m.Name, err)
	}
	if m.Status.Phase != stasisv1.MigrationSucceeded {
		return fmt.Errorf("migration %s/%s of pod %s failed: %s: %s", m.Namespace, m.Name, m.Spec.PodName, m.Status.Reason, m.Status.Message)
	}
	return nil
}

// waitFor reads obj again every pollEvery until done says it ended,
// within timeout (0: no bound but ctx's).
func waitFor(ctx context.Context, c client.Client, obj client.Object, timeout time.Duration, done func() bool) error {
	cond := func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return false, err
		}
		return done(), nil
	}
	if timeout == 0 {
		return wait.PollUntilContextCancel(ctx, pollEvery, true, cond)
	}
	return wait.PollUntilContextTimeout(ctx, pollEvery, timeout, true, cond)
}

// pollEvery is how often the plugin looks at what it waits for.
const pollEvery = 200 * time.Millisecond

func (o *options) restoreCmd() *cobra.Command {
	var pod, from, serviceAccount, node string
	var wait bool
	cmd := &cobra.Command{
		Use:     "restore CHECKPOINT --pod NAME",
		Short:   "Restore a Checkpoint as a new pod (in -n, from --from-namespace)",
		Example: `  kubectl stasis restore web-1 --pod web-copy -n qa --from-namespace shop`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if pod == "" {
				return fmt.Errorf("--pod names the new pod")
			}
			c, ns, err := o.client()
			if err != nil {
				return err
			}
			rs := &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pod},
				Spec: stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Namespace: from, Name: args[0]}, PodName: pod,
					ServiceAccountName: serviceAccount, NodeName: node}}
			if err := c.Create(cmd.Context(), rs); err != nil {
				return err
			}
			fmt.Fprintf(o.out, "restore.stasis.dev/%s created\n", rs.Name)
			if !wait {
				return nil
			}
			if err := waitFor(cmd.Context(), c, rs, 0, func() bool { return rs.Status.Phase.Done() }); err != nil {
				return err
			}
			if rs.Status.Phase == stasisv1.PhaseFailed {
				return fmt.Errorf("restore %s failed: %s: %s", rs.Name, rs.Status.Reason, rs.Status.Message)
			}
			fmt.Fprintf(o.out, "pod/%s is Ready on node %s\n", pod, rs.Status.NodeName)
			return nil
		},
	}
	cmd.Flags().StringVar(&pod, "pod", "", "name of the new pod (and of the Restore)")
	cmd.Flags().StringVar(&from, "from-namespace", "", "namespace of the Checkpoint (default: -n)")
	cmd.Flags().StringVar(&serviceAccount, "service-account", "", "service account of -n the new pod runs as (default: the namespace's default one, never the source pod's)")
	cmd.Flags().StringVar(&node, "node", "", "place the pod on this node (a checkpoint kept on another node is fetched from there; default: any node, or the checkpoint's when it is kept there)")
	cmd.Flags().BoolVar(&wait, "wait", true, "wait until the pod is Ready or the restore failed")
	return cmd
}

func (o *options) listCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List Checkpoints and Restores in the namespace",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ns, err := o.client()
			if err != nil {
				return err
			}
			var cks stasisv1.CheckpointList
			if err := c.List(cmd.Context(), &cks, client.InNamespace(ns)); err != nil {
				return err
			}
			var rss stasisv1.RestoreList
			if err := c.List(cmd.Context(), &rss, client.InNamespace(ns)); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(o.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KIND\tNAME\tPOD\tPHASE\tNODE\tREASON")
			for _, ck := range cks.Items {
				fmt.Fprintf(tw, "Checkpoint\t%s\t%s\t%s\t%s\t%s\n", ck.Name, ck.Spec.PodName, ck.Status.Phase, ck.Status.NodeName, ck.Status.Reason)
			}
			for _, rs := range rss.Items {
				fmt.Fprintf(tw, "Restore\t%s\t%s\t%s\t%s\t%s\n", rs.Name, rs.Spec.PodName, rs.Status.Phase, rs.Status.NodeName, rs.Status.Reason)
			}
			return tw.Flush()
		},
	}
}

func (o *options) inspectCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect CHECKPOINT",
		Short: "Show a Checkpoint's record: containers, images, digests, timings, the pod it captured",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ns, err := o.client()
			if err != nil {
				return err
			}
			var ck stasisv1.Checkpoint
			if err := c.Get(cmd.Context(), client.ObjectKey{Namespace: ns, Name: args[0]}, &ck); err != nil {
				return err
			}
			b, err := yaml.Marshal(map[string]any{"spec": ck.Spec, "status": ck.Status})
			if err != nil {
				return err
			}
			_, err = o.out.Write(b)
			return err
		},
	}
}
