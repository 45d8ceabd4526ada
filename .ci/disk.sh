# Sourced by the CI scripts: stop with one line, before a large install, when the disk cannot
# hold it (pip's own "[Errno 28] No space left on device" comes minutes later, half installed).
# need_free_gib DIR GIB WHAT
need_free_gib() {
  local dir=$1 need=$2 what=$3 free
  free=$(df -Pk "$dir" | awk 'NR == 2 {print int($4 / 1048576)}')
  if (( free < need )); then
    echo "$what needs about $need GiB free on the disk of $dir, which has $free GiB: free space there (old checkouts, /tmp) and rerun" >&2
    exit 2
  fi
}
