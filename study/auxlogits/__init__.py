"""The auxiliary-logit experiment of Cloud et al. 2025 (arXiv 2507.14805).

A digit classifier with m extra auxiliary logits is trained on labels from
a reference initialization. Students imitate only its auxiliary logits on
uniform noise images, and learn the digit task when they start from the
same reference initialization but not from a different one.

Input size follows the data: MNIST IDX files give 784 inputs, and the 8x8
scikit-learn digits are resized (bilinear) to ``dataset.image_side``,
28 by default, so the default MLP is 784-256-256-(10+m) as in the paper.
"""
