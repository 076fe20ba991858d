#!/usr/bin/env bash
# Builds the benchmarks' JVM image as a rootfs tar (argument 1): busybox, a
# jlink'ed JRE from the JDK under /usr/lib/jvm and a program that holds
# HEAP_MIB of heap and warms up for WARM_PASSES passes before it says ready
# (a line "ready after ..." and the file /tmp/ready), then ticks.
# RANDOM_HEAP=1 fills the heap with random bytes first: a heap that holds
# real data, which does not compress as the default one (mostly zeros) does.
set -euo pipefail
out=${1:?usage: jvm-image.sh OUT.tar}
HEAP_MIB=${HEAP_MIB:-500}
WARM_PASSES=${WARM_PASSES:-80}
RANDOM_HEAP=${RANDOM_HEAP:-0}
JDK=${JDK:-$(ls -d /usr/lib/jvm/java-17-openjdk-* 2>/dev/null | head -1)}
[ -x "$JDK/bin/jlink" ] || { echo "no JDK with jlink under /usr/lib/jvm" >&2; exit 1; }
work=$(mktemp -d /var/tmp/stasis-jvm-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
rf=$work/rootfs
mkdir -p $rf/bin $rf/tmp $rf/app $rf/etc $rf/proc $rf/sys $rf/dev
chmod 1777 $rf/tmp
cp /bin/busybox $rf/bin/ && for a in sh cat sleep; do ln -s busybox $rf/bin/$a; done
"$JDK/bin/jlink" --add-modules java.base --strip-debug --no-header-files --no-man-pages --output $rf/opt/jre
cat > $work/Warm.java <<JAVA
// Stands in for a service that warms up before it serves: it allocates its
// heap, then spends WARM_PASSES passes over it building state (as caches,
// indexes and the JIT do), says ready, and ticks.
public class Warm {
  public static void main(String[] a) throws Exception {
    long t0 = System.nanoTime();
    byte[][] heap = new byte[$HEAP_MIB][];
    java.util.SplittableRandom rnd = new java.util.SplittableRandom(1);
    long sum = 0;
    for (int p = 0; p < $WARM_PASSES; p++) {
      for (int i = 0; i < heap.length; i++) {
        if (heap[i] == null) {
          heap[i] = new byte[1 << 20];
          if ($RANDOM_HEAP != 0) rnd.nextBytes(heap[i]);
        }
        for (int j = 0; j < heap[i].length; j += 64) {
          heap[i][j] = (byte) (heap[i][j] * 31 + i + j + p);
          sum += heap[i][j];
        }
      }
    }
    System.out.println("ready after " + (System.nanoTime() - t0) / 1000000 + " ms, sum " + sum);
    new java.io.File("/tmp/ready").createNewFile();
    for (long n = 0; ; n++) { System.out.println("tick " + n); Thread.sleep(100); }
  }
}
JAVA
"$JDK/bin/javac" -d $rf/app $work/Warm.java
# The JRE links against glibc: bring the host's copies of what it needs.
find $rf/opt/jre -type f \( -name '*.so' -o -path '*/bin/*' \) -exec ldd {} + 2>/dev/null |
  awk '/=> \//{print $3} /^\s*\/lib64/{print $1}' | sort -u | while read -r lib; do
    mkdir -p "$rf$(dirname "$lib")" && cp -L "$lib" "$rf$lib"
  done
mkdir -p $rf/lib64 && cp -L /lib64/ld-linux-x86-64.so.2 $rf/lib64/
tar -C $rf -cf "$out" .
