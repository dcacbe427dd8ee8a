#!/bin/sh
# tests/tool_test.sh — checks of the `unimem` command line tool that need a
# shell: a working directory that is gone, a file in the way of the O_DIRECT
# probe, a FIFO, a /proc file, a misplaced option.
#
#   sh tests/tool_test.sh TOOL CASE     (CASE: cwd_gone probe_file bogus_option proc_file fifo huge_pages gpu_without_gpu index)
#
# Every failure of the tool must be one line on stderr and an exit code
# between 1 and 125, never a signal (an abort is 134 in the shell).
set -u
case_name=$2
# Absolute: some cases run the tool from another directory.
tool=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
[ -x "$tool" ] || { echo "FAIL ($case_name): no tool at $1"; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/unimem_tool_test.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
fail() {
  echo "FAIL ($case_name): $*"
  echo "--- stdout"; cat "$work/out" 2>/dev/null
  echo "--- stderr"; cat "$work/err" 2>/dev/null
  exit 1
}
# A clean failure: the asked exit code, and exactly one line on stderr
# containing the given text.
expect_clean_failure() {  # CODE TEXT
  [ "$rc" -eq "$1" ] || fail "exit code $rc, expected $1"
  [ "$(wc -l < "$work/err")" -eq 1 ] || fail "stderr is not one line"
  grep -q -- "$2" "$work/err" || fail "stderr does not mention '$2'"
}

case $case_name in
cwd_gone)
  # info used to throw std::filesystem_error from current_path: std::terminate.
  mkdir "$work/gone"
  (cd "$work/gone" && rmdir "$work/gone" && exec "$tool" info) > "$work/out" 2> "$work/err"
  rc=$?
  [ "$rc" -lt 128 ] || fail "killed by signal $((rc - 128))"
  [ "$rc" -lt 126 ] || fail "could not run the tool (exit $rc)"
  if [ "$rc" -eq 0 ]; then
    grep -q "io_uring" "$work/out" || fail "info printed no storage section"
  else
    expect_clean_failure "$rc" "unimem"
  fi
  ;;
probe_file)
  # info's O_DIRECT probe used to open ".unimem_direct_probe" with O_CREAT
  # and unlink it: a user's file of that name was deleted.
  mkdir "$work/dir"
  printf 'keep me\n' > "$work/dir/.unimem_direct_probe"
  (cd "$work/dir" && TMPDIR="$work/dir" exec "$tool" info) > "$work/out" 2> "$work/err"
  rc=$?
  [ "$rc" -eq 0 ] || fail "exit code $rc"
  [ -f "$work/dir/.unimem_direct_probe" ] || fail "the probe deleted an existing file"
  [ "$(cat "$work/dir/.unimem_direct_probe")" = "keep me" ] || fail "the probe changed an existing file"
  [ "$(ls -A "$work/dir" | wc -l)" -eq 1 ] || fail "the probe left files behind: $(ls -A "$work/dir")"
  grep -q "O_DIRECT in $work/dir" "$work/out" || fail "no O_DIRECT line for the directory"
  ;;
huge_pages)
  # load takes private huge pages where they back a load faster (THP on, and
  # not a VM whose host takes free memory back), says how much of its Block
  # they back, and says why where it did not ask for them.
  policy=$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)
  reports=no
  for d in /sys/bus/virtio/devices/*; do
    [ "$(cat "$d/device" 2>/dev/null)" = 0x0005 ] && [ "$(cut -c6 "$d/features" 2>/dev/null)" = 1 ] && reports=yes
  done
  head -c $((12 << 20)) /dev/urandom > "$work/file"
  "$tool" load "$work/file" > "$work/out" 2> "$work/err"
  rc=$?
  [ "$rc" -eq 0 ] || fail "exit code $rc"
  grep -q "of it on huge pages" "$work/out" || fail "load did not say what backs its Block"
  if { [ "$policy" = always ] || [ "$policy" = madvise ]; } && [ "$reports" = no ]; then
    grep -q " 0 B of it on huge pages" "$work/out" && fail "THP is '$policy' and no host takes memory back, yet no huge page"
  else
    grep -q "not asked for" "$work/out" || fail "no huge pages asked for (THP '$policy', reporting $reports) and no why"
  fi
  ;;
gpu_without_gpu)
  # --gpu where there is no GPU: one line that says so, exit 1.
  if command -v nvidia-smi > /dev/null && nvidia-smi > /dev/null 2>&1; then
    echo "PASS ($case_name): skipped: a GPU is here"
    exit 0
  fi
  printf 'x' > "$work/file"
  "$tool" load "$work/file" --gpu > "$work/out" 2> "$work/err"
  rc=$?
  expect_clean_failure 1 "CUDA"
  ;;
bogus_option)
  # The first argument after load used to be taken as the file whatever it was.
  printf 'x' > "$work/file"
  "$tool" load --bogus "$work/file" > "$work/out" 2> "$work/err"
  rc=$?
  expect_clean_failure 2 "unknown option --bogus"
  if grep -q "unknown option $work/file" "$work/err"; then fail "blames the file, not --bogus"; fi
  ;;
huge_page_hint)
  # Where shmem huge pages are off, info says how to allow them for Blocks.
  policy=$(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null)
  "$tool" info > "$work/out" 2> "$work/err" || fail "info failed"
  case "$policy" in
  *"[never]"* | *"[deny]"*)
    grep -q "echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled" "$work/out" ||
      fail "no hint although shmem_enabled is: $policy" ;;
  *)
    if grep -q "echo advise >" "$work/out"; then fail "a hint although shmem_enabled is: $policy"; fi ;;
  esac
  ;;
bad_dtype)
  printf 'x' > "$work/file"
  "$tool" load "$work/file" --gpu --dtype I32 > "$work/out" 2> "$work/err"
  rc=$?
  expect_clean_failure 2 "--dtype needs F32, F16 or BF16"
  "$tool" load "$work/file" --dtype F16 > "$work/out" 2> "$work/err"
  rc=$?
  expect_clean_failure 2 "need --gpu"
  ;;
proc_file)
  # stat says 0 bytes, read gives more: it used to "load" 0 bytes and succeed.
  "$tool" load /proc/self/status > "$work/out" 2> "$work/err"
  rc=$?
  expect_clean_failure 1 "size of 0 bytes but is not empty"
  ;;
fifo)
  # Opening a FIFO without a writer used to block forever.
  mkfifo "$work/fifo" || fail "mkfifo"
  timeout 20 "$tool" load "$work/fifo" > "$work/out" 2> "$work/err"
  rc=$?
  [ "$rc" -ne 124 ] || fail "unimem load hung on a FIFO"
  expect_clean_failure 1 "not a regular file"
  ;;
index)
  # A sharded model's index: the library's resolver names its shards (each
  # checked for the tensors the index puts there); one that names a file
  # outside its folder, or a tensor its shard lacks, fails cleanly.
  corpus=$(cd "$(dirname "$0")/../fuzz/corpus/safetensors" && pwd)
  mkdir "$work/model" && cp "$corpus/valid_two" "$work/model/a.safetensors" && cp "$corpus/valid_two" "$work/outside.safetensors"
  printf '{"weight_map": {"a": "a.safetensors"}}' > "$work/model/model.safetensors.index.json"  # valid_two has a and b
  "$tool" load "$work/model/model.safetensors.index.json" > "$work/out" 2> "$work/err" || fail "a valid index failed"
  grep -q "1 files, 1 tensors" "$work/out" || fail "the index's shard and tensor were not loaded"
  printf '{"weight_map": {"w": "../outside.safetensors"}}' > "$work/model/model.safetensors.index.json"
  "$tool" load "$work/model/model.safetensors.index.json" > "$work/out" 2> "$work/err"
  rc=$?
  expect_clean_failure 1 "not a file name in the index's folder"
  printf '{"weight_map": {"no_such_tensor": "a.safetensors"}}' > "$work/model/model.safetensors.index.json"
  "$tool" load "$work/model/model.safetensors.index.json" > "$work/out" 2> "$work/err"
  rc=$?
  expect_clean_failure 1 "no_such_tensor"
  ;;
*)
  echo "unknown case $case_name"
  exit 2
  ;;
esac
echo "PASS ($case_name)"
