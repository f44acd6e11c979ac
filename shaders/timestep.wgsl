// kernel family: timestep (to be written)
