#!/usr/bin/env bash
# Regenerates what controller-gen makes from api/ and the +kubebuilder
# markers: deepcopy, CRDs, the controller's RBAC role. Generated code is
# never edited by hand.
#
#   bash hack/generate.sh           regenerate
#   bash hack/generate.sh --check   fail if anything was stale (CI); it is
#                                   regenerated in place either way
set -euo pipefail
cd "$(dirname "$0")/.."
gen="go run sigs.k8s.io/controller-tools/cmd/controller-gen@v0.23.0"
outputs=(api/v1alpha1/zz_generated.deepcopy.go config/crd/bases config/rbac/role.yaml)
sum() { find "${outputs[@]}" -type f -print0 | sort -z | xargs -0 sha256sum; }
before=$(sum)
$gen object paths=./api/...
$gen crd paths=./api/... output:crd:artifacts:config=config/crd/bases
$gen rbac:roleName=stasis-controller paths=./internal/... output:rbac:artifacts:config=config/rbac
if [ "${1:-}" = --check ] && [ "$(sum)" != "$before" ]; then
  echo "generated code was stale (now regenerated in place; review and commit):" >&2
  diff <(echo "$before") <(sum) >&2 || true
  exit 1
fi
