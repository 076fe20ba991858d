package kube

import (
	"fmt"
	"os"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stasisv1 "github.com/stasis-dev/stasis/api/v1alpha1"
)

// TestFigures prints the figures, all from one run on one node:
// Restore created to pod Ready next to the cold start of the same pod, for
// the busybox counter and for a JVM holding about 500 MiB, and the time to
// scale a Deployment of that JVM from 1 to 5 Ready replicas, cold and warm
// (every replica restored from the checkpoint image). hack/bench-kube.sh
// runs it; without STASIS_BENCH_JVM_ROOTFS it is skipped.
func TestFigures(t *testing.T) {
	requireNode(t)
	jvmRootfs := os.Getenv("STASIS_BENCH_JVM_ROOTFS")
	if jvmRootfs == "" {
		t.Skip("a benchmark: hack/bench-kube.sh runs it")
	}
	const jvmImage = "localhost/bench-jvm:1"
	if err := node.ImportRootfs(jvmImage, jvmRootfs, []string{"/bin/sh"}); err != nil {
		t.Fatal(err)
	}
	ns := namespace(t, "figures")
	type row struct {
		name             string
		cold, warm, lazy time.Duration
	}
	var rows []row
	var notes []string

	for _, w := range []struct {
		name string
		pod  func(name string) *corev1.Pod
	}{
		{"busybox counter", func(name string) *corev1.Pod { return counterPod(ns, name) }},
		{"JVM, 500 MiB heap", func(name string) *corev1.Pod { return jvmPod(ns, name, jvmImage) }},
	} {
		src := map[string]string{"bus": "bb-src", "JVM": "jvm-src"}[w.name[:3]]
		start := time.Now()
		createPod(t, w.pod(src))
		cold := waitReadyFast(t, ns, src, start)
		t0 := time.Now()
		ck := checkpointPod(t, ns, src+"-ck", src, nil)
		notes = append(notes, fmt.Sprintf("%s: Checkpoint created to Succeeded %.2f s, archive %.1f MiB, dump %d ms",
			w.name, time.Since(t0).Seconds(), float64(ck.Status.Containers[0].Size)/(1<<20), ck.Status.Containers[0].DurationMillis))
		r := row{name: w.name + ": start to Ready", cold: cold}
		for _, lazy := range []bool{false, true} {
			copyName := src + map[bool]string{false: "-copy", true: "-lazy"}[lazy]
			start = time.Now()
			if err := kc.Create(ctx, &stasisv1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: copyName},
				Spec: stasisv1.RestoreSpec{CheckpointRef: stasisv1.CheckpointReference{Name: src + "-ck"}, PodName: copyName, LazyPages: lazy}}); err != nil {
				t.Fatal(err)
			}
			took := waitReadyFast(t, ns, copyName, start)
			// What trust costs the restore: the grant asked of the agent
			// (which reads pod, Restore and Checkpoint from the API
			// server) and the checkpoint found and its signature verified.
			rec := restoreRecord(t, ns, copyName)
			trust := time.Duration(rec.Phases["grant_us"]+rec.Phases["resolve_us"]) * time.Microsecond
			notes = append(notes, fmt.Sprintf("%s%s: grant %.1f ms + find and verify %.1f ms = %.1f%% of restore to Ready",
				w.name, map[bool]string{true: " (lazy)"}[lazy], float64(rec.Phases["grant_us"])/1000, float64(rec.Phases["resolve_us"])/1000,
				100*trust.Seconds()/took.Seconds()))
			if lazy {
				r.lazy = took
			} else {
				r.warm = took
			}
			node.Client.CoreV1().Pods(ns).Delete(ctx, copyName, metav1.DeleteOptions{})
		}
		rows = append(rows, r)
		node.Client.CoreV1().Pods(ns).Delete(ctx, src, metav1.DeleteOptions{})
	}

	jvmCk := &stasisv1.Checkpoint{}
	if err := kc.Get(ctx, client.ObjectKey{Namespace: ns, Name: "jvm-src-ck"}, jvmCk); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"cold", "warm", "lazy"} {
		name := "jvm-" + mode
		d := jvmDeployment(ns, name, jvmImage)
		if mode != "cold" {
			rc := "stasis"
			d.Spec.Template.Spec.RuntimeClassName = &rc
			warmStart(t, ns, name, stasisv1.WarmStartSpec{CheckpointRef: &stasisv1.CheckpointReference{Name: jvmCk.Name}, LazyPages: mode == "lazy"})
			d.Spec.Template.Annotations = map[string]string{stasisv1.AnnotationRestoreFrom: "WarmStart/" + name}
		}
		if _, err := node.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitReplicas(t, ns, name, 1)
		start := time.Now()
		scale(t, ns, name, 5)
		waitReplicas(t, ns, name, 5)
		took := time.Since(start)
		switch mode {
		case "cold":
			rows = append(rows, row{name: "JVM Deployment: scale 1 to 5 Ready", cold: took})
		case "warm":
			rows[len(rows)-1].warm = took
		case "lazy":
			rows[len(rows)-1].lazy = took
		}
		node.Client.AppsV1().Deployments(ns).Delete(ctx, name, metav1.DeleteOptions{})
		poll(t, 2*time.Minute, "replicas of "+name+" gone", func() bool {
			l, _ := node.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
			return len(l.Items) == 0
		})
	}

	fmt.Printf("\nKubernetes %s node, containerd 2.4, one run (seconds)\n", node.Name)
	fmt.Printf("%-40s %8s %8s %8s %11s %11s\n", "", "cold", "stasis", "lazy", "cold/stasis", "cold/lazy")
	for _, r := range rows {
		fmt.Printf("%-40s %8.2f %8.2f %8.2f %10.1fx %10.1fx\n", r.name, r.cold.Seconds(), r.warm.Seconds(), r.lazy.Seconds(),
			r.cold.Seconds()/r.warm.Seconds(), r.cold.Seconds()/r.lazy.Seconds())
	}
	fmt.Println("stasis: a Restore (the RuntimeClass, for the Deployment) restoring the checkpoint; lazy: the same with lazy pages")
	for _, n := range notes {
		fmt.Println(n)
	}
}

func jvmContainer(image string) corev1.Container {
	return corev1.Container{Name: "jvm", Image: image, ImagePullPolicy: corev1.PullNever,
		Command: []string{"/opt/jre/bin/java", "-XX:+UseSerialGC", "-XX:-UsePerfData", "-Xms600m", "-Xmx700m", "-cp", "/app", "Warm"},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"cat", "/tmp/ready"}}},
			PeriodSeconds: 1, FailureThreshold: 600}}
}

func jvmPod(ns, name, image string) *corev1.Pod {
	grace := int64(1)
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: &grace, Containers: []corev1.Container{jvmContainer(image)}}}
}

func jvmDeployment(ns, name, image string) *appsv1.Deployment {
	one, grace := int32(1), int64(1)
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec: corev1.PodSpec{TerminationGracePeriodSeconds: &grace, Containers: []corev1.Container{jvmContainer(image)}}}}}
}

// waitReadyFast polls a pod's Ready condition every 20 ms and returns the
// time since start.
func waitReadyFast(t *testing.T, ns, name string, start time.Time) time.Duration {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		p, err := node.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return time.Since(start)
			}
		}
	}
	t.Fatalf("pod %s/%s not Ready", ns, name)
	return 0
}
