# Sourced by the tuning rounds: one baseline run at the main study's schedule (8-epoch cosine, validation
# split of 10 000 training images, kNN every 2 epochs), stopped with SIGTERM once epoch 4's record is written.
#   short_run OUT RECIPE NAME [OVERRIDE ...]   (from the repository root; OMP_NUM_THREADS set by the caller)
short_run() {
  local out=$1 recipe=$2 name=$3; shift 3
  local dir=$out/$name
  mkdir -p "$out"
  .venv/bin/dimcl pretrain -c fashion_mnist/$recipe --out "$dir" dimcl.weight=0.0 data.val_size=10000 \
    trainer.max_epochs=8 eval.every=2 trainer.progress_bar=false "$@" > "$dir.log" 2>&1 &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do
    if [ -f "$dir/metrics.jsonl" ] && grep -q '"epoch": 4,' "$dir/metrics.jsonl"; then kill -TERM $pid; fi
    sleep 15
  done
  wait $pid
}
