#!/usr/bin/env bash
# The main job: install (idempotent), write synthetic data in the real dataset formats, train and
# evaluate the demo configs (tiny CLIP, CPU), then print the results table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${FASTREID_EXT_VENV:-.venv}
PY="$VENV/bin/python"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
"$PY" tools/make_synthetic_data.py --format cuhk --root datasets/demo --num-ids 300 --split-counts 200 20 80 \
  --images-per-id 4 --captions-per-image 2 --seed 0 --overwrite
"$PY" tools/make_synthetic_vi_data.py --format sysu --root datasets/demo_vi --num-ids 100 \
  --images-per-camera 3 --height 64 --width 32 --seed 0 --overwrite
# Baseline, Propot and CPCL share the synthetic CUHK-PEDES-format data (text-to-image; chance
# R@1 = 1/80 identities); CSDN uses the synthetic SYSU-MM01-format data (infrared-to-visible).
DEMOS=${DEMOS:-"configs/Baseline/demo.yml configs/Propot/demo.yml configs/CPCL/demo.yml configs/CSDN/demo.yml"}
runs=()
for cfg in $DEMOS; do
  # every query's top-10 gallery items (ranking_*.jsonl) for the retrieval grids below
  "$PY" tools/train_net.py --config-file "$cfg" TEST.T2I.SAVE_RANKING_TOPK 10 TEST.VI.SAVE_RANKING_TOPK 10
  runs+=("$cfg")
done
"$PY" tools/summarize_results.py "${runs[@]}"
# retrieval grids, worst-queries pages and training curves of every run (prints every path)
"$PY" tools/visualize_results.py "${runs[@]}"
# a searchable index of the Baseline demo's test gallery, for tools/search.py and the web page
BASELINE_DIR=output/demo/baseline
if [ -f "$BASELINE_DIR/model_final.pth" ]; then
  "$PY" tools/extract_features.py --config-file configs/Baseline/demo.yml \
    --weights "$BASELINE_DIR/model_final.pth" --dataset CUHKPEDES --split test \
    --output "$BASELINE_DIR/gallery_test"
  echo
  echo "[run_demo] Retrieval grids and worst-queries pages: output/demo/<method>/visualization/*/"
  echo "[run_demo]   (worst_queries.html, grids/query_*.png); training curves: output/demo/<method>/training_curves.png"
  echo "[run_demo] Search the Baseline demo's test gallery from the command line:"
  echo "[run_demo]   $PY tools/search.py --index $BASELINE_DIR/gallery_test --from-split --num-queries 3 --grid $BASELINE_DIR/search.png"
  echo "[run_demo] or start the search page (then open http://127.0.0.1:8765/):"
  echo "[run_demo]   $PY tools/serve_search.py --index $BASELINE_DIR/gallery_test"
fi
