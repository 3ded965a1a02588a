#!/usr/bin/env bash
# Refresh the chat page's vendored browser libraries from the npm registry.
# The page must work with no network, so their built files live in the repo.
#   bash scripts/update_vendor.sh                 # the pinned versions below
#   MARKED=18.3.0 bash scripts/update_vendor.sh   # try a newer one, then run the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
MARKED=${MARKED:-18.2.1}
DOMPURIFY=${DOMPURIFY:-3.4.18}
HLJS=${HLJS:-11.12.0}
dest=templates/static/vendor
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "marked@$MARKED" "dompurify@$DOMPURIFY" "@highlightjs/cdn-assets@$HLJS" >/dev/null)
for f in "$tmp"/*.tgz; do mkdir -p "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
mkdir -p "$dest"
cp "$tmp/marked-$MARKED/package/lib/marked.umd.js" "$dest/marked.umd.js"
cp "$tmp/marked-$MARKED/package/LICENSE" "$dest/LICENSE.marked"
cp "$tmp/dompurify-$DOMPURIFY/package/dist/purify.min.js" "$dest/purify.min.js"
cp "$tmp/dompurify-$DOMPURIFY/package/LICENSE" "$dest/LICENSE.dompurify"
cp "$tmp/highlightjs-cdn-assets-$HLJS/package/highlight.min.js" "$dest/highlight.min.js"
cp "$tmp/highlightjs-cdn-assets-$HLJS/package/styles/github.min.css" "$dest/hljs-light.min.css"
cp "$tmp/highlightjs-cdn-assets-$HLJS/package/styles/github-dark.min.css" "$dest/hljs-dark.min.css"
cp "$tmp/highlightjs-cdn-assets-$HLJS/package/LICENSE" "$dest/LICENSE.highlightjs"
printf 'marked %s\ndompurify %s\n@highlightjs/cdn-assets %s\n' "$MARKED" "$DOMPURIFY" "$HLJS" > "$dest/VERSIONS"
echo "vendored into $dest:"; cat "$dest/VERSIONS"
