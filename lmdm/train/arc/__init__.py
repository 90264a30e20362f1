"""ARC-Forcing: post-training an LMDM on its own rollouts with adversarial relativistic-contrastive losses."""
