// kernel family: attention (to be written)
