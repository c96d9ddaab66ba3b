"""`evaluate.py` / `stlight-evaluate`: the flags and main; see the script's docstring.

Scores a trained STLight on a split (OpenSTL metrics, baselines, pictures) or forecasts new data.
"""

import os
import signal
import sys

from absl import app, flags
from ml_collections import config_flags

from stlight_jax import runtime
from stlight_jax.cli import errors as cli_errors

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
flags.DEFINE_string(
    "pretrained",
    None,
    "A shipped model by name (e.g. mmnist_cpu_2h): its weights (SHA-256 checked) and config.",
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
flags.DEFINE_integer(
    "num_test", None, "Moving MNIST: score only the first N test sequences (default: all)."
)
flags.DEFINE_integer("num_samples", 4, "Sequences drawn as PNG strips and GIFs.")
flags.DEFINE_bool("save_arrays", False, "Eval mode: also write inputs/targets/predictions .npy.")
flags.DEFINE_float(
    "ssim_data_range", 2.0, "SSIM data_range: 2.0 as OpenSTL and the paper; 1.0 is textbook."
)
runtime.define_distributed_flags()


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    # SIGTERM stops evaluate.py as Ctrl-C does: its output set is left as it was (output_set).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        _evaluate()
    except KeyboardInterrupt:  # one line, not a traceback
        out = FLAGS.out
        if not out and FLAGS.workdir:
            where = ("eval", FLAGS.split) if FLAGS.mode == "eval" else ("predict",)
            out = os.path.join(FLAGS.workdir, *where)
        cli_errors.interrupted(
            os.path.basename(sys.argv[0]),
            f"interrupted; nothing written: {out or '--out'} keeps its previous outputs, if any",
        )


def _evaluate() -> None:
    from stlight_jax.log_noise import quiet_library_logs

    quiet_library_logs()
    runtime.initialize_distributed_from_flags()
    import jax

    from stlight_jax.evaluation import runner as evaluation

    options = evaluation.EvalOptions(
        workdir=FLAGS.workdir,
        config=FLAGS.config,
        weights=FLAGS.weights,
        checkpoint=FLAGS.checkpoint,
        step=FLAGS.step,
        split=FLAGS.split,
        mode=FLAGS.mode,
        input_path=FLAGS.input,
        horizon=FLAGS.horizon,
        out=FLAGS.out,
        num_samples=FLAGS.num_samples,
        save_arrays=FLAGS.save_arrays,
        ssim_data_range=FLAGS.ssim_data_range,
        key_map=FLAGS.key_map,
        pretrained=FLAGS.pretrained,
        num_test=FLAGS.num_test,
    )
    from stlight_jax import peers

    with peers.watched():  # a dead peer (multi-process): one line, exit 3
        result = evaluation.run(options)
    if jax.process_index() == 0:
        if result["mode"] == "eval":
            print(evaluation.format_table(result))
        else:
            print(
                f"{result['num_sequences']} sequence(s) -> {result['horizon']} frames "
                f"({result['rollout']})"
            )
        print(f"written to {result['out']}")


def main() -> None:
    """Entry point of the script and the console script. Config paths such as
    configs/mmnist.py:S also resolve to the installed configs, so it works from any directory."""
    import os
    import sys

    from stlight_jax.config.packaged import resolve_config_flag

    runtime.reexec_with_malloc_hugepages()  # XLA:CPU's per-step temp block on 2 MB pages
    sys.argv[:] = resolve_config_flag(sys.argv)
    cli_errors.run_absl(_main, os.path.basename(sys.argv[0]))
