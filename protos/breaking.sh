#!/usr/bin/env bash
# Fail when the contracts in protos/ (working tree) break those of a base branch.
#
# Usage: protos/breaking.sh [base]  (default: main; `make proto-lint` runs it)
#
# The base is the local branch, else its origin/ copy (CI checks out pull requests
# detached). On main itself the base is the last commit, so a breaking edit is
# caught before it is committed; an unchanged clone passes. A base without any
# .proto file has nothing to break.
set -euo pipefail
cd "$(dirname "$0")/.."
base="${1:-main}"
buf="${BUF:-bin/buf}"
git_dir="$(git rev-parse --path-format=absolute --git-common-dir)"
for ref in "refs/heads/$base" "refs/remotes/origin/$base"; do
  git rev-parse -q --verify "$ref^{commit}" >/dev/null || continue
  if ! git ls-tree -r --name-only "$ref" -- protos | grep -q '\.proto$'; then
    echo "buf breaking: $ref has no protos yet, nothing to break"
    exit 0
  fi
  echo "buf breaking: protos/ against $ref"
  exec "$buf" breaking protos --against "$git_dir#format=git,ref=$ref,subdir=protos"
done
echo "buf breaking: no branch '$base' (nor origin/$base) to compare with;" \
  "fetch it first: git fetch origin $base" >&2
exit 1
