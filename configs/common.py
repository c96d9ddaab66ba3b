"""The base ConfigDict every dataset config starts from; fields are documented inline.

Dataset configs (`mmnist.py`, `taxibj.py`, ...) call `get_base_config()` and override a few
fields, so every run's resolved config has the same schema and a misspelled override fails.
"""

from __future__ import annotations

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
    """Returns the full schema with Moving MNIST / STLight-S defaults."""
    config = ml_collections.ConfigDict()
    config.name = "mmnist_S"
    config.seed = 0

    # The network (paper Figure 10). Shapes are NHWC: inputs (B, frames_in, H, W, channels).
    config.model = ml_collections.ConfigDict()
    config.model.frames_in = 10  # T
    config.model.frames_out = 10  # T'
    config.model.channels = 1  # C
    config.model.image_size = (64, 64)  # (H, W)
    config.model.dim = 1000  # d, latent channels
    config.model.depth = 16  # de, number of STLMixer blocks
    config.model.patch = 2  # p
    config.model.overlap = 0  # O (0 or 1: no overlap)
    config.model.k1 = 3  # depthwise kernel
    config.model.k2 = 7  # dilated depthwise kernel
    config.model.dilation = 3  # dilation of the k2 conv
    config.model.conv_impl = "auto"  # depthwise conv formulation: 'auto' | 'lax' | 'shifted'
    # The paper's ablations (configs/ablations.py); the defaults are the paper's model.
    config.model.init = "hybrid"  # 'hybrid' | 'kaiming_normal' | 'kaiming_uniform' (appendix D)
    config.model.decoder = "shuffle_reassemble"  # | 'reassemble_shuffle' (appendix F)
    config.model.skip = "thirds"  # 'thirds' | 'fifths' | 'none' (Table 4)

    # Data. `batch_size` is the global batch (split over processes and devices).
    config.data = ml_collections.ConfigDict()
    config.data.name = "mmnist"  # 'mmnist' | 'taxibj' | 'kth' | 'kitticaltech' | 'custom'
    config.data.data_dir = "data"  # where datasets live and generated sets are cached
    config.data.batch_size = 16
    config.data.eval_batch_size = 16
    config.data.seed = 0
    config.data.num_train = 10_000  # Moving MNIST: fresh sequences per epoch
    config.data.num_val = 1_000  # Moving MNIST: fixed held-out validation sequences
    config.data.num_test = 10_000  # Moving MNIST: fixed test sequences (MNIST test digits)
    config.data.mnist_path = ""  # optional user MNIST (idx files dir / .npz)
    config.data.tfds_dir = ""  # prepared TFDS data_dir (ArrayRecord): mnist digits, moving_mnist
    config.data.test_file = ""  # optional mnist_test_seq.npy (the paper's test set)
    config.data.test_source = "auto"  # Moving MNIST test set: 'auto' (test_file, else generated)
    # | 'tfds' (TFDS moving_mnist in tfds_dir: the sequences of mnist_test_seq.npy)
    config.data.path = ""  # taxibj dataset.npz / kth or kitticaltech root / custom .npy|.npz
    config.data.layout = "NTHWC"  # custom arrays: 'NTHWC' | 'NTCHW'
    config.data.value_range = (0.0, 1.0)  # custom arrays: declared range of the stored values
    config.data.worker_count = 0  # grain worker processes (0: in-process)
    config.data.read_threads = 2  # grain threads per process producing samples
    config.data.prefetch_buffer_size = 4  # batches buffered per process (each is MBs)
    config.data.num_digits = 2  # Moving MNIST: digits per sequence (OpenSTL: 2)

    # Optimisation (paper Table 2).
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 3e-3  # peak lr
    config.optimizer.schedule = "onecycle"  # 'onecycle' (stepped per update) | 'cosine' (per epoch)
    config.optimizer.pct_start = 0.3
    config.optimizer.div_factor = 25.0
    config.optimizer.final_div_factor = 1e4
    config.optimizer.cycle_momentum = True  # OneCycle cycles Adam's beta1 0.95 -> 0.85 -> 0.95
    config.optimizer.base_momentum = 0.85
    config.optimizer.max_momentum = 0.95
    config.optimizer.b1 = 0.9  # used when beta1 is not cycled
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.weight_decay = 0.0
    config.optimizer.min_lr = 1e-6  # cosine schedule floor
    config.optimizer.warmup_epochs = 0  # cosine schedule linear warm-up
    config.optimizer.warmup_lr = 1e-5

    config.num_epochs = 200
    config.l1_weight = 0.0  # training loss: MSE (the paper's) + l1_weight * MAE
    config.compute_dtype = "float32"  # 'float32' | 'bfloat16' (params and BN stats stay f32)
    config.eval_every_epochs = 1
    config.log_every_steps = 50
    config.checkpoint_every_steps = 0  # 0: at the end of every epoch only
    config.init_from = ""  # Orbax checkpoint dir or PyTorch weights file (Figure 10 / STF keys)
    config.init_from_key_map = ""  # JSON of regex -> Figure 10 key, for weights in other layouts
    return config


def model_fields(sizes: dict, **overrides) -> dict:
    """`config.model` fields from a `stlight_jax.model_size.PAPER_SIZES` entry (+ overrides)."""
    return {**sizes, **overrides}
