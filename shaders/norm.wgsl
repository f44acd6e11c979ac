// kernel family: norm (to be written)
