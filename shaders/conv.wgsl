// kernel family: conv (to be written)
