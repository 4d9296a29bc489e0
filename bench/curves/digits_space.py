"""The space recorded for task ``digits`` (bench/curves/record.py): the noisy-label digits task
of bench/search_quality.py (16 px, a fifth of the CV labels random, a clean holdout).

``data`` is set by the recorder; the rest is what a replay of the recorded table searches.
"""

from search.space import choice, loguniform, uniform

data = "set-by-the-recorder"
image_size = 16
folds = 3
epochs = 4
metric = "accuracy"
augment = "light"
hflip = False
tracking = "none"
threads = 1
backbone = choice("test_resnet", "test_vit")
lr = loguniform(1e-4, 3e-2)
batch_size = choice(16, 32, 64)
weight_decay = loguniform(1e-5, 5e-2)
dropout = uniform(0.0, 0.5)
loss = choice("ce", "focal", "label_smoothing")
focal_gamma = uniform(0.5, 3.0, when={"loss": "focal"})
label_smoothing = uniform(0.0, 0.2, when={"loss": "label_smoothing"})
