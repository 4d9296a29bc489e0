"""Transfer learning on your own photos: pretrained timm backbones at 224 px (a GPU template).

    hpo run spaces/transfer_224.py --data path/to/photos --trials 40

`data` is a folder of class subfolders or a CSV of path,label[,group] (a group column, such
as a person or a patient id, keeps each group inside one fold). Pretrained weights come from
the Hugging Face hub; offline, download them once and set pretrained to the file's path.
"""

from search.space import choice, loguniform, uniform

data = "photos/"  # change me, or pass --data
image_size = 224
folds = 5
holdout = 0.1  # kept out of cross-validation; scores the final ensemble honestly
epochs = 12
patience = 4
metric = "f1_macro"
pretrained = True
trials = 40
top_k = 2  # ensemble selection picks, with weights, from the fold models of the two best trials
tta = "hflip"

backbone = choice("convnext_tiny", "efficientnet_b0", "resnet50", "vit_small_patch16_224")
# head: a linear head fitted to convergence on cached features (seconds per trial);
# probe_full: that head, then full fine-tuning from it (LP-FT); full: fine-tune from a random head.
finetune = choice("full", "head", "probe_full")
# What only acts when the backbone trains (a head trial has no steps, epochs or dropout).
_TRAINS = {"finetune": ["full", "probe_full"]}
lr = loguniform(1e-5, 3e-3, when=_TRAINS)
batch_size = choice(32, 64, when=_TRAINS)
optimizer = choice("adamw", "sgd", when=_TRAINS)
weight_decay = loguniform(1e-6, 5e-2, when=_TRAINS)
# The L2 strength of the linear probe (head trials, and probe_full's first stage).
probe_l2 = loguniform(0.05, 5.0, when={"finetune": ["head", "probe_full"]})
warmup_epochs = uniform(0.0, 2.0, when=_TRAINS)
scheduler = "cosine"
dropout = uniform(0.0, 0.4, when=_TRAINS)
drop_path = uniform(0.0, 0.2, when=_TRAINS)
feature_views = 2  # augmented views per image whose features head trials train on
augment = choice("light", "medium", "heavy")
loss = choice("ce", "focal", "label_smoothing")
focal_gamma = uniform(1.0, 3.0, when={"loss": "focal"})
label_smoothing = uniform(0.05, 0.2, when={"loss": "label_smoothing"})
class_weights = choice(None, "balanced")
