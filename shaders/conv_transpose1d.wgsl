// kernel family: conv_transpose1d (to be written)
