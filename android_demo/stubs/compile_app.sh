#!/usr/bin/env bash
# Compile the app's Java (MainActivity + the core) against ExecuTorch's API as generated from its sources
# (stubs/java) and stand-ins for the Android classes it uses (stubs/android), with javac -Werror. The R
# class comes from the layout's ids, as aapt would make it. No Android SDK needed; nothing is packaged.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
app="$here/../app/src/main"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
mkdir -p "$out/gen/dev/gemmaedge/demo"
{
  echo "package dev.gemmaedge.demo;"
  echo "public final class R {"
  echo "  public static final class id {"
  grep -ho '@+id/[A-Za-z0-9_]*' "$app"/res/layout/*.xml | sort -u | awk -F/ '{printf "    public static final int %s = %d;\n", $2, 0x7f080000 + NR}'
  echo "  }"
  echo "  public static final class layout {"
  for f in "$app"/res/layout/*.xml; do n=$(basename "$f" .xml); echo "    public static final int $n = 0x7f0b0001;"; done
  echo "  }"
  echo "}"
} > "$out/gen/dev/gemmaedge/demo/R.java"
javac -Xlint:all,-serial -Werror -d "$out/classes" \
  $(find "$here/java" "$here/android" "$here/../core/src/main/java" "$out/gen" "$app/java" -name '*.java')
echo "compiled $(find "$app/java" -name '*.java' | wc -l) app source(s) against ExecuTorch's API at $(sed -n 's/.*executorch \(v[^ ]*\) .*/\1/p' "$here/java/org/pytorch/executorch/extension/llm/LlmModule.java")"
