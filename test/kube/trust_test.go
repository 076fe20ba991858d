package kube

import (
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
	reconcilers "github.com/stasis-dev/stasis/internal/controller"
	"github.com/stasis-dev/stasis/pkg/wire"
)

// binding is a ClusterRole bound in a namespace.
type binding struct{ ns, role string }

// asServiceAccount is a client of a new ServiceAccount of ns with these
// bindings, once the authorizer has seen them, and a token of it for the
// API server.
func asServiceAccount(t *testing.T, ns, name string, bindings ...binding) (client.Client, kubernetes.Interface, string) {
	t.Helper()
	token, err := serviceAccountToken(ctx, ns, name, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bindings {
		rb := roleBindingKind(b.ns, name, "ClusterRole", b.role)
		rb.Subjects[0].Namespace = ns
		if _, err := node.Client.RbacV1().RoleBindings(b.ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := rest.AnonymousClientConfig(node.Config)
	cfg.BearerToken = token
	c, err := client.New(cfg, client.Options{Scheme: kc.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	for _, b := range bindings {
		// Each role used here gets something: stasis-* checkpoints, the
		// built-in ones pods.
		attr := &authzv1.ResourceAttributes{Namespace: b.ns, Verb: "get", Resource: "pods"}
		if strings.HasPrefix(b.role, "stasis-") {
			attr.Group, attr.Resource = "stasis.dev", "checkpoints"
		}
		poll(t, 30*time.Second, name+"'s "+b.role+" in "+b.ns, func() bool {
			r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx,
				&authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: attr}}, metav1.CreateOptions{})
			return err == nil && r.Status.Allowed
		})
	}
	return c, cs, token
}

// restoringPod is a counter pod run by the RuntimeClass stasis that names
// a grant.
func restoringPod(ns, name, grant string) *corev1.Pod {
	p := counterPod(ns, name)
	rc := "stasis"
	p.Spec.RuntimeClassName = &rc
	p.Annotations = map[string]string{stasisv1.AnnotationRestoreFrom: grant}
	return p
}

// waitRefused waits for the pod's container to fail to be created with a
// message that says why, in its status and in an Event, and checks that
// it never ran.
func waitRefused(t *testing.T, ns, pod, why string) {
	t.Helper()
	var msgs []string
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		p, err := node.Client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			continue
		}
		msgs = msgs[:0]
		for _, cs := range p.Status.ContainerStatuses {
			if cs.State.Running != nil {
				t.Fatalf("pod %s/%s runs: %s", ns, pod, podState(p))
			}
			if w := cs.State.Waiting; w != nil {
				msgs = append(msgs, w.Message)
			}
			if st := cs.LastTerminationState.Terminated; st != nil {
				msgs = append(msgs, st.Message)
			}
		}
		inStatus := strings.Contains(strings.Join(msgs, "\n"), why)
		evs, err := node.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
		if err != nil {
			continue
		}
		for _, e := range evs.Items {
			if e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, why) && inStatus {
				return
			}
			msgs = append(msgs, "event: "+e.Message)
		}
	}
	t.Fatalf("pod %s/%s not refused with %q; it says:\n%s", ns, pod, why, strings.Join(msgs, "\n"))
}

// workEntries lists the node store's work directory: a refused restore
// unpacks nothing, so leaves nothing there (and never made a directory).
func workEntries(t *testing.T) []string {
	t.Helper()
	es, _ := os.ReadDir(filepath.Join(stasisRoot, "work"))
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// A namespace-scoped administrator of a cannot make a pod restore b's
// checkpoint: not by naming it in an annotation (by image, by store name,
// by container name: admission refuses, and so does the node when the
// policy is gone), not by a WarmStart naming b's Checkpoint (admission),
// and not by a WarmStart naming b's image (the signature says b).
func TestGrantsBindCheckpointsToNamespaces(t *testing.T) {
	a, b := namespace(t, "ga"), namespace(t, "gb")
	createPod(t, counterPod(b, "web"))
	waitReady(t, b, "web")
	waitCount(t, b, "web", "counter", 2)
	ck := checkpointPod(t, b, "web-1", "web", nil)
	image := ck.Status.Containers[0].Image

	// A namespace administrator of a: edit and stasis-admin there.
	ops, opsCS, _ := asServiceAccount(t, a, "ops", binding{a, "edit"}, binding{a, "stasis-admin"})
	for _, ref := range []string{image, "web-1", "web"} {
		p := restoringPod(a, "steal", "")
		p.Annotations = map[string]string{"restore.stasis.dev/counter": ref}
		forbidden(t, "a pod naming "+ref, "restore.stasis.dev/counter is not allowed", func() error {
			_, err := opsCS.CoreV1().Pods(a).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			return err
		})
	}
	forbidden(t, "a WarmStart of b's Checkpoint", "may not restore checkpoints of namespace "+b, func() error {
		return ops.Create(ctx, &stasisv1.WarmStart{ObjectMeta: metav1.ObjectMeta{Namespace: a, Name: "steal"},
			Spec: stasisv1.WarmStartSpec{CheckpointRef: &stasisv1.CheckpointReference{Namespace: b, Name: "web-1"}}})
	})

	before := workEntries(t)
	if err := ops.Create(ctx, &stasisv1.WarmStart{ObjectMeta: metav1.ObjectMeta{Namespace: a, Name: "by-image"},
		Spec: stasisv1.WarmStartSpec{Images: map[string]string{"counter": image}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := opsCS.CoreV1().Pods(a).Create(ctx, restoringPod(a, "by-image", "WarmStart/by-image"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRefused(t, a, "by-image", `namespace "`+b+`", not "`+a+`"`)
	if _, err := opsCS.CoreV1().Pods(a).Create(ctx, restoringPod(a, "no-grant", "WarmStart/nothing"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRefused(t, a, "no-grant", "WarmStart/nothing does not exist in namespace "+a)
	// A Restore's grant is for its one pod.
	if err := kc.Create(ctx, &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: a, Name: "other"},
		Spec: stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Name: "absent"}, PodName: "other"}}); err != nil {
		t.Fatal(err)
	}
	createPod(t, restoringPod(a, "squat", "Restore/other"))
	waitRefused(t, a, "squat", "is for pod other")

	// With the annotation policy gone, the node still refuses.
	binding, err := node.Client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Get(ctx, "stasis-restore-annotation", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, binding.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		binding.ResourceVersion = ""
		node.Client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, binding, metav1.CreateOptions{})
	})
	p := restoringPod(a, "legacy", "")
	p.Annotations = map[string]string{"restore.stasis.dev/counter": image}
	poll(t, 30*time.Second, "the policy binding gone", func() bool {
		_, err := opsCS.CoreV1().Pods(a).Create(ctx, p.DeepCopy(), metav1.CreateOptions{})
		return err == nil
	})
	waitRefused(t, a, "legacy", "names a checkpoint directly")
	if after := workEntries(t); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Errorf("refused restores left work entries: before %v, after %v", before, after)
	}
	waitCount(t, b, "web", "counter", 2)
}

// A checkpoint image made by hand (valid CRIU images of this very pod, but
// built outside the cluster's agents) is refused: unsigned, and signed by
// a key no node trusts. Signed with the administrator's trusted key, it
// restores; the signature came through the registry with it.
func TestUnsignedCheckpointImageIsRefused(t *testing.T) {
	reg := startRegistry(t)
	ns := namespace(t, "sig")
	createPod(t, counterPod(ns, "web"))
	waitReady(t, ns, "web")
	at := waitCount(t, ns, "web", "counter", 2)
	ck := checkpointPod(t, ns, "web-1", "web", nil)
	blob := filepath.Join(stasisRoot, "images", "oci", "blobs", "sha256", strings.TrimPrefix(ck.Status.Containers[0].Digest, "sha256:"))
	other := filepath.Join(t.TempDir(), "other")
	stasis(t, "key", "generate", other)

	images := map[string]string{"unsigned": "", "foreign": other + ".key", "trusted": trustedKey + ".key"}
	for name, key := range images {
		ref := reg + "/hand/" + name + ":1"
		stasis(t, "image", "build", blob, ref)
		if key != "" {
			stasis(t, "image", "sign", ref, "--key", key)
		}
		stasis(t, "push", "--tls-verify=false", ref)
		stasis(t, "rmi", ref) // the node pulls it, signature and all
		warmStart(t, ns, name, stasisv1.WarmStartSpec{Images: map[string]string{"counter": ref}})
		createPod(t, restoringPod(ns, name, "WarmStart/"+name))
	}
	waitRefused(t, ns, "unsigned", "not signed")
	waitRefused(t, ns, "foreign", "no key this node trusts")
	waitReady(t, ns, "trusted")
	waitRestoredFrom(t, ns, "trusted", at)
	if imgs := stasis(t, "images"); strings.Contains(imgs, reg+"/hand/unsigned") || strings.Contains(imgs, reg+"/hand/foreign") {
		t.Errorf("a refused image was pulled:\n%s", imgs)
	}
}

// Workload kinds the policy does not name are no way around it: a
// CronJob's, a ReplicationController's and a Job's templates that name a
// checkpoint, made by a user with the built-in "edit" role, are admitted
// (they are templates), and every pod they make is refused.
func TestWorkloadTemplatesCannotNameCheckpoints(t *testing.T) {
	ns := namespace(t, "wl")
	_, dev, _ := asServiceAccount(t, ns, "dev", binding{ns, "edit"})
	tmpl := func(name string) corev1.PodTemplateSpec {
		p := restoringPod(ns, name, "")
		p.Annotations = map[string]string{"restore.stasis.dev/counter": "localhost/stasis/other/secret:counter"}
		p.Spec.RestartPolicy = corev1.RestartPolicyNever
		return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}, Annotations: p.Annotations}, Spec: p.Spec}
	}
	one := int32(1)
	rcTmpl := tmpl("rc")
	rcTmpl.Spec.RestartPolicy = corev1.RestartPolicyAlways
	if _, err := dev.CoreV1().ReplicationControllers(ns).Create(ctx, &corev1.ReplicationController{ObjectMeta: metav1.ObjectMeta{Name: "rc"},
		Spec: corev1.ReplicationControllerSpec{Replicas: &one, Selector: map[string]string{"app": "rc"}, Template: &rcTmpl}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.BatchV1().Jobs(ns).Create(ctx, &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "job"},
		Spec: batchv1.JobSpec{Template: tmpl("job")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.BatchV1().CronJobs(ns).Create(ctx, &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Name: "cron"},
		Spec: batchv1.CronJobSpec{Schedule: "* * * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: tmpl("cron")}}}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The controllers' FailedCreate events carry the policy's message.
	refused := map[string]bool{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("refused so far: %v", refused) // poll stops the test
		}
	})
	poll(t, 100*time.Second, "every controller refused", func() bool {
		evs, err := node.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, e := range evs.Items {
			if e.Reason == "FailedCreate" && strings.Contains(e.Message, "restore.stasis.dev/counter is not allowed") {
				name := e.InvolvedObject.Name
				if e.InvolvedObject.Kind == "Job" && strings.HasPrefix(name, "cron-") {
					name = "cron"
				}
				refused[name] = true
			}
		}
		return refused["rc"] && refused["job"] && refused["cron"]
	})
	pods, _ := node.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if len(pods.Items) != 0 {
		t.Errorf("%d pods exist", len(pods.Items))
	}
}

// The controller's token for a node's agent opens nothing else: the API
// server and the agent of another node refuse it. And the controller talks
// only to the agent of the pod's own node: one that answers with any other
// certificate the cluster CA signed (here a serving certificate for
// another name at the same address) is refused before a token is sent.
func TestControllerTokenIsForOneAgentOnly(t *testing.T) {
	requireNode(t)
	tokens := &wire.ServiceAccountTokens{Client: node.Client.CoreV1(), Namespace: "stasis-system", Name: "stasis-controller"}
	token, err := tokens.Token(ctx, node.Name)
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(node.Config)
	cfg.BearerToken = token
	_, err = kubernetes.NewForConfigOrDie(cfg).CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
	if err == nil || !strings.Contains(err.Error(), "Unauthorized") {
		t.Fatalf("the controller's agent token at the API server: %v, want 401 Unauthorized", err)
	}
	_, other := startNodeAgent(t, "other-node")
	hc, _ := rest.HTTPClientFor(rest.AnonymousClientConfig(node.Config))
	req, _ := http.NewRequest(http.MethodGet, "https://"+other+"/v1/containers", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("node %s's token at the agent of other-node: %s, want 401", node.Name, resp.Status)
	}

	cert, key, err := node.IssueServing("impostor")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", net.JoinHostPort(node.IP, "0"), &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	gotToken := make(chan string, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotToken <- r.Header.Get("Authorization")
		w.Write([]byte(`{"containers":[{"name":"counter","image":"localhost/forged:1"}]}`))
	}), ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	n, err := node.Client.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agents := &reconcilers.AgentClients{Nodes: wire.Nodes{Port: l.Addr().(*net.TCPAddr).Port, CA: node.CA, Tokens: tokens}}
	_, err = agents.CheckpointPod(ctx, n, wire.PodCheckpointRequest{Namespace: "x", Pod: "y", Name: "z", UID: "u"})
	if err == nil || !strings.Contains(err.Error(), "system:node:"+node.Name) {
		t.Fatalf("an impostor agent: %v, want a refusal naming system:node:%s", err, node.Name)
	}
	select {
	case h := <-gotToken:
		t.Fatalf("the impostor received a request (Authorization %q)", h)
	default:
	}
}

// A pod with an init container checkpoints and restores: the init
// container runs again in the new pod (it has no checkpoint), the main
// container counts on from the checkpoint.
func TestInitContainerPodRestores(t *testing.T) {
	ns := namespace(t, "init")
	p := counterPod(ns, "web")
	p.Spec.InitContainers = []corev1.Container{{Name: "setup", Image: p.Spec.Containers[0].Image, ImagePullPolicy: corev1.PullNever,
		Command: []string{"sh", "-c", "echo ready > /tmp/setup"}}}
	createPod(t, p)
	waitReady(t, ns, "web")
	at := waitCount(t, ns, "web", "counter", 2)
	ck := checkpointPod(t, ns, "web-1", "web", nil)
	if len(ck.Status.Containers) != 1 || ck.Status.PodTemplate == nil || len(ck.Status.PodTemplate.Spec.InitContainers) != 1 {
		t.Fatalf("checkpoint of a pod with an init container: %+v", ck.Status)
	}
	restoreCounter(t, kc, ns, "copy", stasisv1.CheckpointReference{Name: "web-1"}, at)
}
