"""col775: the COL775 deep-learning studies (ResNet normalisation, MathQA seq2seq, Slot Attention), end to end."""

__version__ = "0.1.0"
