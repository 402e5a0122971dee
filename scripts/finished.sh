# Sourced by the run scripts: `finished DIR` succeeds only if DIR/results.jsonl holds a test record written after
# training (epoch > 0), i.e. the run completed; a directory left by an interrupted run is resumed, not skipped.
finished() {
  [ -f "$1/results.jsonl" ] && python - "$1/results.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
sys.exit(0 if any(r.get("split") == "test" and r.get("epoch", 0) > 0 for r in recs) else 1)
PY
}
