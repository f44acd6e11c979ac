// kernel family: elementwise (to be written)
