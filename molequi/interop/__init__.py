"""Reading models and run folders written by other programs (mace-torch, EDM) as molequi models."""
