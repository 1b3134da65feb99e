"""ResNet with interchangeable from-scratch normalisation layers (assignment 1, part 1)."""
