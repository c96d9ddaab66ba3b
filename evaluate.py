"""Scores a trained STLight on a split (OpenSTL metrics, baselines, pictures) or forecasts new data.

    python evaluate.py --workdir=runs/cpu                      # best checkpoint, test split
    python evaluate.py --workdir=runs/cpu --step=latest --split=val --save_arrays
    python evaluate.py --config=configs/mmnist.py:S --weights=stlight_s.pth --out=eval_s
    python evaluate.py --workdir=runs/cpu --mode=predict --input=frames.npy --horizon=20

Eval mode writes metrics.json, metrics_vs_lead_time.png and sample_<i>.png/.gif to --out
(default <workdir>/eval/<split>). Predict mode reads --input (.npy of (N, T, H, W, C),
(T, H, W, C) or, for 1 channel, (N, T, H, W); floats on [0, 1] or uint8 0..255, which is divided
by 255; or a folder of images, one sequence sorted by file name) and writes predictions.npy,
predictions.json and sequence_<i>.png/.gif (default <workdir>/predict). A --horizon beyond the
trained output length rolls out autoregressively.

Multi-host: start the same command on every host with --coordinator_address, --num_processes
and --process_id (or --distributed), as for train.py; every process reads its share of the
split (predict mode: the whole --input, which must be the same file everywhere) and process 0
writes the same files a single process would. Everything lives in `stlight_jax.evaluation.run`.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from stlight_jax import runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (default: <workdir>/config.json).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Training workdir (its config.json and checkpoints).")
flags.DEFINE_string(
    "weights", None, "PyTorch weights (.pt/.pth/.ckpt/.safetensors; Figure 10 or STF layout)."
)
flags.DEFINE_string(
    "key_map", None, "JSON of regex -> Figure 10 key, for --weights in another layout."
)
flags.DEFINE_string("checkpoint", None, "Orbax checkpoints dir or converted weights checkpoint.")
flags.DEFINE_string(
    "step",
    None,
    "best | latest | N (default: best if any step has validation metrics, else latest)",
)
flags.DEFINE_enum("split", "test", ["test", "val"], "Split to score in eval mode.")
flags.DEFINE_enum("mode", "eval", ["eval", "predict"], "Score a split, or forecast --input.")
flags.DEFINE_string("input", None, "Predict mode: .npy of observed frames or a folder of images.")
flags.DEFINE_integer("horizon", None, "Predict mode: frames to forecast (default frames_out).")
flags.DEFINE_string(
    "out", None, "Output dir (default <workdir>/eval/<split> or <workdir>/predict)."
)
flags.DEFINE_integer("num_samples", 4, "Sequences drawn as PNG strips and GIFs.")
flags.DEFINE_bool("save_arrays", False, "Eval mode: also write inputs/targets/predictions .npy.")
flags.DEFINE_float(
    "ssim_data_range", 2.0, "SSIM data_range: 2.0 as OpenSTL and the paper; 1.0 is textbook."
)
runtime.define_distributed_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from stlight_jax.train import quiet_library_logs

    quiet_library_logs()
    runtime.initialize_distributed_from_flags()
    import jax

    from stlight_jax import evaluation

    try:
        result = evaluation.run(
            workdir=FLAGS.workdir,
            config=FLAGS.config,
            weights=FLAGS.weights,
            checkpoint=FLAGS.checkpoint,
            step=FLAGS.step,
            key_map=FLAGS.key_map,
            split=FLAGS.split,
            mode=FLAGS.mode,
            input_path=FLAGS.input,
            horizon=FLAGS.horizon,
            out=FLAGS.out,
            num_samples=FLAGS.num_samples,
            save_arrays=FLAGS.save_arrays,
            ssim_data_range=FLAGS.ssim_data_range,
        )
    except (ValueError, FileNotFoundError) as e:
        # A bad option or input: the message says what was expected; no traceback or flag dump.
        sys.exit(f"evaluate.py: error: {e}")
    if jax.process_index() == 0:
        if result["mode"] == "eval":
            print(evaluation.format_table(result))
        else:
            print(
                f"{result['num_sequences']} sequence(s) -> {result['horizon']} frames "
                f"({result['rollout']})"
            )
        print(f"written to {result['out']}")


if __name__ == "__main__":
    runtime.reexec_with_malloc_hugepages()  # XLA:CPU's per-step temp block on 2 MB pages
    app.run(main)
