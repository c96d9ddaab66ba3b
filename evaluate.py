"""Scores a trained STLight on a split (OpenSTL metrics, baselines, pictures) or forecasts new data.

    python evaluate.py --pretrained=mmnist_cpu_2h --out=look   # the shipped model, by name
    python evaluate.py --workdir=runs/cpu                      # best checkpoint, test split
    python evaluate.py --workdir=runs/cpu --step=latest --split=val --save_arrays
    python evaluate.py --config=configs/mmnist.py:S --weights=stlight_s.pth --out=eval_s
    python evaluate.py --workdir=runs/cpu --mode=predict --input=frames.npy --horizon=20

Eval mode writes metrics.json, metrics_vs_lead_time.png and sample_<i>.png/.gif to --out
(default <workdir>/eval/<split>); --num_test=N scores the first N Moving MNIST test sequences
only. Predict mode reads --input (.npy of (N, T, H, W, C),
(T, H, W, C) or, for 1 channel, (N, T, H, W); floats on [0, 1] or uint8 0..255, which is divided
by 255; or a folder of images, one sequence sorted by file name) and writes predictions.npy,
predictions.json and sequence_<i>.png/.gif (default <workdir>/predict). A --horizon beyond the
trained output length rolls out autoregressively, streamed to predictions.npy (the pictures
show at most the first 100 predicted frames).

The files of a run are one whole set: written into a temporary folder beside --out and renamed
into place at the end, so Ctrl-C (one line, exit 130), a full disk (one line naming the file)
or any other failure leaves the previous set as it was; a second evaluation into an --out being
written stops at once (lock file .<name>.lock beside it).

Multi-host: start the same command on every host with --coordinator_address, --num_processes
and --process_id (or --distributed), as for train.py; every process reads its share of the
split (predict mode: the whole --input, which must be the same file everywhere) and process 0
writes the same files a single process would. Everything lives in `stlight_jax.evaluation.runner`
(and `stlight_jax.evaluation.predict` for predict mode).
"""

from stlight_jax.cli.evaluate import main

if __name__ == "__main__":
    main()
