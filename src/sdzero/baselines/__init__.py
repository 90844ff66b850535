"""The methods the paper compares SD-Zero against, at the same questions and generation budget:
RFT (`rft`), GRPO on TRL's GRPOTrainer (`grpo`) and SDFT on the Phase-2 trainer (`sdft`)."""
