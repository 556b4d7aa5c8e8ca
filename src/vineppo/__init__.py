"""vineppo: VinePPO (Kazemnejad et al., arXiv 2410.01679) and its baselines for RL fine-tuning of LMs."""

__version__ = "0.1.0"
