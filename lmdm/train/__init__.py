"""Training: the config (``config``), data crops (``dataset``), the LMDM objective (``objective``), the one training
loop (``loop``) with its checkpoints (``state``), pretraining (``pretrain``) and ARC-Forcing (``arc``) on it."""
