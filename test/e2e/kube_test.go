package e2e

import (
	"context"
	"os"
	"strings"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// In a cluster the agent asks a real API server who a token is
// (TokenReview) and what RBAC lets it do (SubjectAccessReview), with the
// ClusterRoles of config/rbac: a ServiceAccount bound to stasis-admin
// checkpoints, one bound to stasis-viewer lists but gets 403 on
// checkpoint, one bound to nothing gets 403 everywhere, a made-up token 401,
// and so does an admin's token issued for the API server rather than for
// the agent's audience.
func TestAgentAsksTheAPIServer(t *testing.T) {
	api := startAPIServer(t)
	ctx := context.Background()
	b, err := os.ReadFile("../../config/rbac/checkpoint_roles.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var role rbacv1.ClusterRole
		if err := yaml.Unmarshal([]byte(doc), &role); err != nil {
			t.Fatal(err)
		}
		if _, err := api.Client.RbacV1().ClusterRoles().Create(ctx, &role, metav1.CreateOptions{}); err != nil {
			t.Fatalf("cluster role %s: %v", role.Name, err)
		}
	}
	token := func(sa, role string, audiences ...string) string {
		if _, err := api.Client.CoreV1().ServiceAccounts("default").Create(ctx,
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if role != "" {
			if _, err := api.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: sa + "-" + role},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
				Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: "default"}},
			}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		tr, err := api.Client.CoreV1().ServiceAccounts("default").CreateToken(ctx, sa,
			&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: audiences}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	aud := "stasis-agent:e2e-node"
	ops, watcher, nobody := token("ops", "stasis-admin", aud), token("watcher", "stasis-viewer", aud), token("nobody", "", aud)
	// No audience: the API server's own.
	tr, err := api.Client.CoreV1().ServiceAccounts("default").CreateToken(ctx, "ops", &authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	opsForTheAPIServer := tr.Status.Token
	// One for another node's agent.
	tr, err = api.Client.CoreV1().ServiceAccounts("default").CreateToken(ctx, "ops",
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{"stasis-agent:other-node"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	opsElsewhere := tr.Status.Token

	e := newEnv(t)
	e.importBusybox()
	a := startAgentWith(t, e, newPKI(t, "stasis-test-ca"), "", []string{"--kubeconfig", api.Kubeconfig, "--node-name", "e2e-node"})
	c := a.client(t, "", "")
	e.runCounter("kweb", 10)

	if code, b := call(t, c, "GET", a.url+"/v1/containers", watcher, nil); code != 200 || !strings.Contains(string(b), "kweb") {
		t.Errorf("viewer list: %d %s", code, b)
	}
	if code, _ := call(t, c, "POST", a.url+"/v1/containers/kweb/checkpoint", watcher, CheckpointBody{LeaveRunning: true}); code != 403 {
		t.Errorf("viewer checkpoint: %d, want 403", code)
	}
	if code, _ := call(t, c, "GET", a.url+"/v1/containers", nobody, nil); code != 403 {
		t.Errorf("unbound service account: %d, want 403", code)
	}
	if code, _ := call(t, c, "GET", a.url+"/v1/containers", "made-up-token-000000", nil); code != 401 {
		t.Errorf("unknown token: %d, want 401", code)
	}
	if code, _ := call(t, c, "GET", a.url+"/v1/containers", opsForTheAPIServer, nil); code != 401 {
		t.Errorf("a token for the API server: %d, want 401", code)
	}
	if code, _ := call(t, c, "GET", a.url+"/v1/containers", opsElsewhere, nil); code != 401 {
		t.Errorf("a token for another node's agent: %d, want 401", code)
	}
	if code, b := call(t, c, "POST", a.url+"/v1/containers/kweb/checkpoint", ops, CheckpointBody{LeaveRunning: true}); code != 200 {
		t.Fatalf("admin checkpoint: %d %s", code, b)
	}
	audit, _ := os.ReadFile(a.auditLog)
	if !strings.Contains(string(audit), `"user":"system:serviceaccount:default:ops","role":"admin","via":"kubernetes token","action":"checkpoint"`) {
		t.Errorf("audit log does not name the service account:\n%s", audit)
	}
}
