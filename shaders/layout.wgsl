// kernel family: layout (to be written)
