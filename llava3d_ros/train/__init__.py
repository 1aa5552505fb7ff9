"""Training the default alignment head: features of rendered rooms (``headdata``) and the
training, evaluation and export of the head (``train_head``)."""
