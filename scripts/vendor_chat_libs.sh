#!/usr/bin/env bash
# Refresh the chat page's vendored browser libraries (plugins_api/static/echo/vendor/) from npm.
#
# The chat page renders answers as Markdown with marked, sanitizes the HTML with
# DOMPurify and highlights code with highlight.js (its common-languages build).
# They are served as static files, never from a CDN. This script fetches the exact
# versions below with `npm pack` into a temporary directory and copies the browser
# builds and their licences. To upgrade: change a version, run the script, read the
# libraries' changelogs, update vendor/README.md, and run the chat page's browser tests.
#
# Usage: scripts/vendor_chat_libs.sh   (needs npm and the npm registry)
set -euo pipefail

MARKED_VERSION=18.2.1
DOMPURIFY_VERSION=3.4.18
HIGHLIGHT_VERSION=11.12.0

root="$(cd "$(dirname "$0")/.." && pwd)"
vendor="$root/plugins_api/static/echo/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "marked@$MARKED_VERSION" "dompurify@$DOMPURIFY_VERSION" \
  "@highlightjs/cdn-assets@$HIGHLIGHT_VERSION" >/dev/null
for package in marked dompurify highlightjs-cdn-assets; do
  mkdir "$package"
  tar -xzf "$package"-*.tgz -C "$package" --strip-components=1
done

mkdir -p "$vendor"
install -m 0644 marked/lib/marked.umd.js "$vendor/marked.umd.js"
install -m 0644 marked/LICENSE "$vendor/marked.LICENSE"
install -m 0644 dompurify/dist/purify.min.js "$vendor/purify.min.js"
install -m 0644 dompurify/LICENSE "$vendor/dompurify.LICENSE"
install -m 0644 dompurify/LICENSE-MPL "$vendor/dompurify.LICENSE-MPL"
install -m 0644 highlightjs-cdn-assets/highlight.min.js "$vendor/highlight.min.js"
install -m 0644 highlightjs-cdn-assets/styles/github.min.css "$vendor/highlight-github.min.css"
install -m 0644 highlightjs-cdn-assets/styles/github-dark.min.css "$vendor/highlight-github-dark.min.css"
install -m 0644 highlightjs-cdn-assets/LICENSE "$vendor/highlight.js.LICENSE"

# The versions inside the files must be the ones asked for (npm pack resolves exact versions).
grep -q "marked v$MARKED_VERSION " "$vendor/marked.umd.js"
grep -q "DOMPurify $DOMPURIFY_VERSION " "$vendor/purify.min.js"
grep -q "Highlight.js v$HIGHLIGHT_VERSION " "$vendor/highlight.min.js"
echo "vendored marked $MARKED_VERSION, DOMPurify $DOMPURIFY_VERSION, highlight.js $HIGHLIGHT_VERSION into $vendor"
