package v1alpha1

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Pod annotations and labels stasis reads. They are part of the API: the
// controller sets them, admission checks them, the nodes act on them.
const (
	// AnnotationRestoreFrom, on a pod, names the grant its containers are
	// restored from: "Restore/<name>" or "WarmStart/<name>", in the pod's
	// namespace. It is the only restore.stasis.dev/ annotation a pod may
	// carry; the node resolves it through its agent against the API
	// server, so the annotation names a permission, never a checkpoint.
	AnnotationRestoreFrom = "restore.stasis.dev/from"
	// AnnotationPrefixRestore is the prefix admission reserves.
	AnnotationPrefixRestore = "restore.stasis.dev/"
	// AnnotationLazyPages "true" restores the pod's containers lazily.
	AnnotationLazyPages = "stasis.dev/lazy-pages"
	// The opt-out annotations (stasis.dev/checkpoint, stasis.dev/migrate)
	// are pkg/policy's, which enforces them on every path.
	// LabelRestore, on a pod, names the Restore that made it.
	LabelRestore = "stasis.dev/restore"
)

// IsRestoreAnnotation says whether a pod annotation asks how the pod is
// restored: the grant (or a pre-grant image name) and lazy pages. A pod
// made from a checkpointed pod gets its own, never the source's.
func IsRestoreAnnotation(key string) bool {
	return strings.HasPrefix(key, AnnotationPrefixRestore) || key == AnnotationLazyPages
}

// LegacyRestoreAnnotations are a pod's restore.stasis.dev/ annotations
// other than the grant, sorted: once they named a checkpoint image
// directly, which is exactly what a pod author must not be able to do, so
// a pod that has one is refused, never restored.
func LegacyRestoreAnnotations(annotations map[string]string) []string {
	var keys []string
	for k := range annotations {
		if strings.HasPrefix(k, AnnotationPrefixRestore) && k != AnnotationRestoreFrom {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// Grant kinds an AnnotationRestoreFrom names.
const (
	GrantRestore   = "Restore"
	GrantWarmStart = "WarmStart"
)

// A grant's name is a Kubernetes object name (DNS subdomain).
var objectName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)

// Grant is what AnnotationRestoreFrom names.
type Grant struct {
	Kind, Name string
}

func (g Grant) String() string { return g.Kind + "/" + g.Name }

// ParseGrant reads an AnnotationRestoreFrom value.
func ParseGrant(v string) (Grant, error) {
	kind, name, ok := strings.Cut(v, "/")
	if !ok || (kind != GrantRestore && kind != GrantWarmStart) || !objectName.MatchString(name) {
		return Grant{}, fmt.Errorf("%s %q: want Restore/<name> or WarmStart/<name>", AnnotationRestoreFrom, v)
	}
	return Grant{Kind: kind, Name: name}, nil
}
