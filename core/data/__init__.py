"""What the model learns from: images, caption datasets, the vocabulary, the COCO download. Torch-free."""
