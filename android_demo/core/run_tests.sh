#!/usr/bin/env bash
# Compile the Java chat core and run its JUnit 4 tests with the machine's JDK (no Gradle, no Android).
# JUnit comes from Debian's junit4 package (/usr/share/java); override with JUNIT_CP=... elsewhere.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cp="${JUNIT_CP:-/usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar}"
for jar in ${cp//:/ }; do
  [ -f "$jar" ] || { echo "run_tests.sh: $jar not found; install it with: apt-get install junit4" >&2; exit 2; }
done
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
javac -Xlint:all -Werror -d "$out/main" $(find "$here/src/main/java" -name '*.java')
javac -Xlint:all -d "$out/test" -cp "$out/main:$cp" $(find "$here/src/test/java" -name '*.java')
classes=$(cd "$here/src/test/java" && find . -name '*Test.java' | sed 's|^\./||; s|\.java$||; s|/|.|g' | sort)
java -Dgemma.shared="$here/../shared" -cp "$out/main:$out/test:$cp" org.junit.runner.JUnitCore $classes
