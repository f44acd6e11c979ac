// kernel family: embedding (to be written)
