"""Fine-tuning ResNet-50 on labelled chest X-rays; `medsearch_embedder.train` is the command.

`data` reads the labels and splits them by patient (no TensorFlow), `pipeline` feeds images
through the embedder's own preprocessing, `model` holds the classification head and the
objective, `metrics` the validation AUC, `loop` the epochs and their checkpoints, `errors`
what stops training.
"""
