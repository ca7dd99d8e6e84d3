#!/usr/bin/env bash
# Run the curve's variants one after another, appending "<experiment> <seconds> rc=<code>" to $TIMES.
# Each runs up to the evaluation of its last step (grow improve.grows, step len(filter.values)).
# Usage (repository root): REST_DATA_DIR=../shared/data TIMES=times.txt research/curve2/run_curve.sh c2_n32 c2_n8 ...
set -u
export REST_EXPERIMENTS_DIR=research/curve2
: "${TIMES:=times.txt}"
for v in "$@"; do
  last=$(.venv/bin/python -c "from rest_pipeline.spec import find_spec, load_spec
i = load_spec(find_spec('$v')).improve
print(f'grow_{i.grows}/improve_{len(i.schedule)}')")
  t=$(date +%s)
  ./scripts/rest main "$v" --until "$last/eval"
  rc=$?
  echo "$v $(( $(date +%s) - t )) rc=$rc" >> "$TIMES"
done
