// kernel family: upsample (to be written)
