"""Model workers: load a model, batch its sequences continuously, serve its Redis job streams."""
