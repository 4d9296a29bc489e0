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
finetune = choice("full", "head")
lr = loguniform(1e-5, 3e-3)
batch_size = choice(32, 64)
optimizer = choice("adamw", "sgd")
weight_decay = loguniform(1e-6, 5e-2)
warmup_epochs = uniform(0.0, 2.0)
scheduler = "cosine"
dropout = uniform(0.0, 0.4)
drop_path = uniform(0.0, 0.2)
augment = choice("light", "medium", "heavy")
loss = choice("ce", "focal", "label_smoothing")
focal_gamma = uniform(1.0, 3.0, when={"loss": "focal"})
label_smoothing = uniform(0.05, 0.2, when={"loss": "label_smoothing"})
class_weights = choice(None, "balanced")
