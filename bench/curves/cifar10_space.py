"""The space recorded for task ``cifar10`` (bench/curves/record.py): real photos at 32 px.

``data`` is set by the recorder (the unpacked CIFAR-10 subset's CSV); the rest is what a
replay of the recorded table searches, so it stays fixed once recording has started.
"""

from search.space import choice, loguniform, uniform

data = "set-by-the-recorder"
image_size = 32
folds = 3
epochs = 6
metric = "accuracy"
augment = "light"
hflip = True
tracking = "none"
threads = 1
backbone = choice("resnet10t", "mobilenetv3_small_050", "test_resnet")
lr = loguniform(1e-4, 3e-2)
batch_size = choice(32, 64)
weight_decay = loguniform(1e-5, 5e-2)
dropout = uniform(0.0, 0.3)
loss = choice("ce", "focal", "label_smoothing")
focal_gamma = uniform(0.5, 3.0, when={"loss": "focal"})
label_smoothing = uniform(0.0, 0.2, when={"loss": "label_smoothing"})
