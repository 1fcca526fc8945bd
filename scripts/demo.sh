#!/usr/bin/env bash
# The main job on the embedded sample: generate it, convert it, train, plot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# Each module's bytecode is written into .venv at its first import and read by every later
# process; where PYTHONDONTWRITEBYTECODE is set, every process would compile TensorFlow again.
unset PYTHONDONTWRITEBYTECODE
.venv/bin/python make_sample.py --out sample_data/cats_vs_dogs
.venv/bin/python convert.py --src sample_data/cats_vs_dogs --out records --overwrite
rm -rf runs/demo  # a fresh run each time (the same --model_dir would resume)
.venv/bin/python train.py --records records --epochs "${EPOCHS:-5}" --model_dir runs/demo
# The trained model on photos it has not seen, with the training's own preprocessing.
.venv/bin/python predict.py --model_dir runs/demo --output runs/demo/predictions.csv sample_data/cats_vs_dogs/test
echo "Plots: runs/demo/training_curves.png runs/demo/input_batch.png runs/demo/augmented_variants.png"
echo "Test report: runs/demo/eval_test/ (confusion_matrix.png, mistakes.png); predictions: runs/demo/predictions.csv"
