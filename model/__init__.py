"""The Deep Residual Set network: pure PyTorch (no Hydra, h5py or trainer imports)."""
