"""lossdiag: why validation loss rises while accuracy holds (ShallowNet, standard vs bounded cross-entropy)."""
