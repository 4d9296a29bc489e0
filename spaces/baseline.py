"""Baseline space: runs anywhere (CPU is enough) on scikit-learn's bundled digits.

    hpo run spaces/baseline.py --trials 50

Copy this file and point `data` at your own images to start a study of your own.
"""

from search.space import choice, loguniform, uniform

data = "builtin:digits"  # or a folder of class subfolders, or a CSV: path,label[,group]
image_size = 32
folds = 5
epochs = 6
metric = "f1_macro"  # maximised; "accuracy" or "log_loss" (minimised) also work
trials = 50
augment = "light"
hflip = False  # digits are not mirror-symmetric

backbone = choice("test_resnet", "test_convnext", "test_vit")
lr = loguniform(3e-4, 1e-2)
batch_size = choice(32, 64)
weight_decay = loguniform(1e-5, 5e-2)
dropout = uniform(0.0, 0.3)
loss = choice("ce", "focal", "label_smoothing")
focal_gamma = uniform(0.5, 3.0, when={"loss": "focal"})
label_smoothing = uniform(0.0, 0.2, when={"loss": "label_smoothing"})

# Optional: configurations to evaluate first, and a study that stops by itself.
# baselines = [{"backbone": "test_resnet", "lr": 3e-3, "loss": "ce"}]
# patience_trials = 20  # 20 finished trials in a row without a gain beyond the best's fold std
